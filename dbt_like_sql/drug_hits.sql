-- Drug hits (per structure, drug and concentration) across plates, feature sets and models (base / fine-tuned), next to the planted effect (synthetic plates).
select
    q.plate_id,
    coalesce(q.structure_name, '') as structure_name,
    q.drug,
    q.concentration,
    q.feature_set,
    q.model_version,
    case
        when q.feature_set <> 'embedding' then q.feature_set
        when m.plate_id = q.plate_id and m.parent_version is not null then 'finetuned'
        else 'base'
    end as model_role,
    q.n_cells,
    round(q.mean_average_precision, 4) as mean_average_precision,
    q.q_value,
    q.is_hit,
    coalesce(t.planted_effect, 'unknown') as planted_effect
from drug_qvalues as q
left join drug_truth as t
    on t.plate_id = q.plate_id and t.drug = q.drug and coalesce(t.concentration, -1) = coalesce(q.concentration, -1)
    and coalesce(t.structure_name, '') in ('', coalesce(q.structure_name, ''))
left join models as m on m.model_version = q.model_version
order by q.plate_id, structure_name, q.feature_set, model_role, q.q_value, q.drug, q.concentration
