-- Per plate: cells ingested, quarantined (by stage and reason).
with ingested as (
    select plate_id, count(*) as n_cells from cells where dataset = 'drug_plates' group by plate_id
),
bad as (
    select plate_id, stage, reason, count(*) as n from quarantine where dataset = 'drug_plates'
    group by plate_id, stage, reason
)
select
    i.plate_id,
    i.n_cells,
    coalesce(sum(b.n), 0) as n_quarantined,
    coalesce(string_agg(b.stage || ':' || b.reason || '=' || b.n, ', ' order by b.stage, b.reason), '') as reasons
from ingested as i
left join bad as b on b.plate_id = i.plate_id
group by i.plate_id, i.n_cells
order by i.plate_id
