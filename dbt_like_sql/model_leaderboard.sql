-- One row per model and data set (its latest benchmarked version): the key metrics side by side, and a rank
-- per data set by the mean z-score over the metrics every model of the data set has a value for (z-scored
-- across the data set's models, sign flipped where lower is better, training time and input preparation left out;
-- emissions and the per-stored-code time left out too: on a CPU the offline tracker's emissions are the
-- inference time times a constant power, and the embedding time is the inference time times the draws, so
-- scoring them would count speed two or three times).
with latest as (
    select model, dataset, arg_max(model_version, computed_at) as model_version
    from benchmark_metrics
    group by model, dataset
),
m as (
    select b.model, b.model_version, b.dataset, b.metric, b.value,
        case when b.metric like 'classification_top%' or b.metric like 'regression_r2_%' then 1 else -1 end as sign
    from benchmark_metrics b
    join latest l using (model, model_version, dataset)
),
complete as (
    select dataset, metric
    from m
    where metric not in ('train_seconds', 'input_seconds_per_cell', 'emissions_g_co2eq_per_cell',
                         'embedding_seconds_per_cell')
    group by dataset, metric
    having count(value) = count(*)
),
z as (
    select m.model, m.dataset, m.sign * coalesce(
        (m.value - avg(m.value) over w) / nullif(stddev_pop(m.value) over w, 0), 0) as score
    from m
    join complete c using (dataset, metric)
    window w as (partition by m.dataset, m.metric)
),
score as (
    select model, dataset, avg(score) as mean_z_score, count(*) as n_scored_metrics
    from z
    group by model, dataset
),
wide as (
    select
        model,
        model_version,
        dataset,
        max(value) filter (where metric = 'reconstruction_error') as reconstruction_error,
        max(value) filter (where metric = 'reconstruction_1_minus_iou') as reconstruction_1_minus_iou,
        max(value) filter (where metric = 'evolution_energy') as evolution_energy,
        max(value) filter (where metric = 'interpolation_distance') as interpolation_distance,
        max(value) filter (where metric = 'rotation_invariance_error') as rotation_invariance_error,
        max(value) filter (where metric = 'rotation_invariance_error_z90') as rotation_invariance_error_z90,
        max(value) filter (where metric = 'rotation_invariance_error_spread') as rotation_invariance_error_spread,
        max(value) filter (where metric = 'intrinsic_dimension') as intrinsic_dimension,
        max(value) filter (
            where metric in ('classification_top1_rule', 'classification_top1_piece_count')
        ) as classification_top1,
        max(value) filter (where metric = 'regression_r2_volume') as regression_r2_volume,
        max(value) filter (where metric = 'n_parameters') as n_parameters,
        max(value) filter (where metric = 'inference_seconds_per_cell') as inference_seconds_per_cell,
        max(value) filter (where metric = 'embedding_seconds_per_cell') as embedding_seconds_per_cell,
        max(value) filter (where metric = 'emissions_g_co2eq_per_cell') as emissions_g_co2eq_per_cell,
        count(*) filter (where value is null) as n_null_metrics
    from m
    group by model, model_version, dataset
)
select
    w.dataset,
    rank() over (partition by w.dataset order by s.mean_z_score desc nulls last) as rank,
    w.model,
    w.model_version,
    round(s.mean_z_score, 3) as mean_z_score,
    s.n_scored_metrics,
    w.* exclude (dataset, model, model_version)
from wide w
left join score s using (model, dataset)
order by w.dataset, rank, w.model
