-- Per plate, structure, drug and concentration: the zero-shot base model, the plate's fine-tuned model, the hand-crafted baseline
-- and structure given shape (where the structure's base data set has that model) side by side (mAP vs DMSO, q-value, hit), next to the planted effect (synthetic plates).
with q as (
    select
        q.*,
        case
            when q.feature_set <> 'embedding' then q.feature_set
            when m.plate_id = q.plate_id and m.parent_version is not null then 'finetuned'
            else 'base'
        end as model_role
    from drug_qvalues as q
    left join models as m on m.model_version = q.model_version
)
select
    q.plate_id,
    coalesce(q.structure_name, '') as structure_name,
    q.drug,
    q.concentration,
    coalesce(any_value(t.planted_effect), 'unknown') as planted_effect,
    max(q.model_version) filter (where q.model_role = 'base') as base_version,
    round(max(q.mean_average_precision) filter (where q.model_role = 'base'), 4) as base_map,
    max(q.q_value) filter (where q.model_role = 'base') as base_q,
    bool_or(q.is_hit) filter (where q.model_role = 'base') as base_hit,
    max(q.model_version) filter (where q.model_role = 'finetuned') as finetuned_version,
    round(max(q.mean_average_precision) filter (where q.model_role = 'finetuned'), 4) as finetuned_map,
    max(q.q_value) filter (where q.model_role = 'finetuned') as finetuned_q,
    bool_or(q.is_hit) filter (where q.model_role = 'finetuned') as finetuned_hit,
    round(max(q.mean_average_precision) filter (where q.model_role = 'handcrafted'), 4) as handcrafted_map,
    max(q.q_value) filter (where q.model_role = 'handcrafted') as handcrafted_q,
    bool_or(q.is_hit) filter (where q.model_role = 'handcrafted') as handcrafted_hit,
    round(max(q.mean_average_precision) filter (where q.model_role = 'structure_given_shape'), 4) as structure_given_shape_map,
    max(q.q_value) filter (where q.model_role = 'structure_given_shape') as structure_given_shape_q,
    bool_or(q.is_hit) filter (where q.model_role = 'structure_given_shape') as structure_given_shape_hit
from q
left join drug_truth as t
    on t.plate_id = q.plate_id and t.drug = q.drug and coalesce(t.concentration, -1) = coalesce(q.concentration, -1)
    and coalesce(t.structure_name, '') in ('', coalesce(q.structure_name, ''))
group by q.plate_id, coalesce(q.structure_name, ''), q.drug, q.concentration
order by q.plate_id, structure_name, q.drug, q.concentration
