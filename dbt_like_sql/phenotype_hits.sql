-- Phenotypes enriched per treatment (KS of held-out phenotype probabilities against DMSO, BH q < 0.05), per
-- screen and feature set, next to the planted effect (synthetic screens); one row per treatment.
select
    e.screen_id,
    e.feature_set,
    e.drug,
    e.concentration,
    coalesce(t.planted_effect, 'unknown') as planted_effect,
    round(t.strength, 3) as strength,
    list(e.phenotype order by e.q_value) filter (where e.enriched) as enriched_phenotypes,
    min(e.q_value) filter (where e.phenotype <> 'none') as min_q_value
from phenotype_enrichment as e
left join screen_truth as t
    on t.screen_id = e.screen_id and t.drug = e.drug and coalesce(t.concentration, -1) = coalesce(e.concentration, -1)
group by all
order by e.screen_id, e.feature_set, e.drug, e.concentration
