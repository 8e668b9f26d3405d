-- Every embedding (LanceDB) joined to its cell's metadata and its model, one row per cell x model version.
select
    e.cell_id,
    e.model_version,
    m.model_name,
    c.dataset,
    c.plate_id,
    c.well,
    c.drug,
    c.structure_name,
    c.shape_type,
    c.label,
    t.planted_effect,
    e.vector
from cell_embeddings as e
join cells as c on c.cell_id = e.cell_id and c.dataset = e.dataset
left join models as m on m.model_version = e.model_version
left join drug_truth as t on t.plate_id = c.plate_id and t.drug = c.drug
    and coalesce(t.concentration, -1) = coalesce(c.concentration, -1)
    and coalesce(t.structure_name, '') in ('', coalesce(c.structure_name, ''))
