-- Drug hits across plates and feature sets, next to the planted effect (synthetic plates).
select
    q.plate_id,
    q.drug,
    q.feature_set,
    q.model_version,
    q.n_cells,
    round(q.mean_average_precision, 4) as mean_average_precision,
    q.q_value,
    q.is_hit,
    coalesce(t.planted_effect, 'unknown') as planted_effect
from drug_qvalues as q
left join drug_truth as t
    on t.plate_id = q.plate_id and t.drug = q.drug
order by q.plate_id, q.feature_set, q.q_value, q.drug
