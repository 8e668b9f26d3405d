-- Screen-level hits: every structure x drug x concentration over a screen's replicate plates, per feature set and model
-- role (base zero-shot, fine-tuned, hand-crafted), next to the planted effect and its strength (synthetic screens).
select
    s.screen_id,
    coalesce(s.structure_name, '') as structure_name,
    s.drug,
    s.concentration,
    s.feature_set,
    s.model_role,
    s.model_version,
    s.method,
    s.n_plates,
    s.n_cells,
    round(s.mean_average_precision, 4) as mean_average_precision,
    s.p_value,
    s.q_value,
    s.is_hit,
    coalesce(t.planted_effect, 'unknown') as planted_effect,
    round(t.strength, 3) as strength
from screen_qvalues as s
left join screen_truth as t
    on t.screen_id = s.screen_id and t.drug = s.drug and coalesce(t.concentration, -1) = coalesce(s.concentration, -1)
    and t.structure_name in ('', coalesce(s.structure_name, ''))
order by s.screen_id, structure_name, s.model_role, s.drug, s.concentration
