-- Dose response per screen, structure, drug and model role: mAP and q at each concentration (ascending) and the rank
-- correlation of mAP with dose (1: mAP rises with every step up in concentration).
select
    screen_id,
    structure_name,
    drug,
    model_role,
    any_value(planted_effect) as planted_effect,
    list(concentration order by concentration) as concentrations,
    list(mean_average_precision order by concentration) as map_by_dose,
    list(q_value order by concentration) as q_by_dose,
    list(strength order by concentration) as strength_by_dose,
    round(corr(rank_conc, rank_map), 3) as dose_rank_correlation,
    bool_or(is_hit) as hit_at_any_dose
from (
    select *,
        rank() over (partition by screen_id, structure_name, drug, model_role order by concentration) as rank_conc,
        rank() over (partition by screen_id, structure_name, drug, model_role order by mean_average_precision) as rank_map
    from screen_hits
    where concentration is not null
)
group by screen_id, structure_name, drug, model_role
order by screen_id, structure_name, model_role, drug
