-- One row per model and data set, key metrics side by side.
select
    model,
    model_version,
    dataset,
    max(value) filter (where metric = 'rotation_invariance_error') as rotation_invariance_error,
    max(value) filter (where metric = 'rotation_invariance_error_z90') as rotation_invariance_error_z90,
    max(value) filter (where metric = 'best_val_loss') as reconstruction_loss,
    max(value) filter (where metric = 'n_parameters') as n_parameters,
    max(value) filter (where metric = 'inference_seconds_per_cell') as inference_seconds_per_cell
from benchmark_metrics
group by model, model_version, dataset
order by dataset, model
