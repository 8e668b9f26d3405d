"""Structure given shape (seed 003): is a nucleus-size-only drug told apart from a structure-only drug?

On a storage root of its own: writes a coupled reference set (structure volume a fraction of the nucleus
volume), registers it as a data set whose base model (sdf_demo) plates of ``coupled_nucleolus`` cells are routed
to, trains it, trains the stacked beta-VAE on it (``dataset_statcell``: coupling, beta sweep, generations), then
runs coupled plates (seeds no development run used) through the plate assets. Prints the stacked model's
numbers, the beta sweep, and per drug the q-values of the base (zero-shot) and fine-tuned embeddings, the
hand-crafted features and ``structure_given_shape``. Last line: per feature set, the calls of the
nucleus-size-only drug, of the structure-only drug and of the nulls.

    CELLREP_HOME=.cellrep-bench-statcell python benchmarks/bench_statcell.py [--plates 2] [--n-per-drug 24]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import dagster as dg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plates", type=int, default=2)
    ap.add_argument("--n-cells", type=int, default=160, help="cells of the coupled reference set")
    ap.add_argument("--n-per-drug", type=int, default=24)
    ap.add_argument("--n-dmso", type=int, default=40)
    ap.add_argument("--seed", type=int, default=905001, help="first plate seed (evaluation range)")
    ap.add_argument("--null-size", type=int, default=10000)
    ap.add_argument("--betas", default="0.25,1,4,16")
    args = ap.parse_args()
    os.environ.setdefault("CELLREP_HOME", os.path.abspath(".cellrep-bench-statcell"))

    from cellrep_core import paths, structures
    from cellrep_core.cli import write_synthetic_plate
    from cellrep_core.data.coupled import COUPLED_STRUCTURE, generate_coupled_dataset
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.datasets import CHAIN, materialize_dataset, register_dataset, run_failure
    from orchestration.demo import _materialize, instance, register_landing_plates

    inst = instance()
    wh = Warehouse()
    t0 = time.perf_counter()
    ref_dir = paths.cellrep_home() / "inputs" / "synthetic_coupled"
    generate_coupled_dataset(ref_dir, n_cells=args.n_cells, seed=31)
    register_dataset("synthetic_coupled", ref_dir / "manifest.csv", None, "sdf_demo", half_extent_vox=32.0,
                     target_voxel_um=1.0, inst=inst)
    structures.set_base(wh, COUPLED_STRUCTURE, "synthetic_coupled")
    res = materialize_dataset("synthetic_coupled", list(CHAIN), inst=inst)
    if not res.success:
        raise SystemExit(run_failure(res))
    print(f"coupled reference set + base model: {time.perf_counter() - t0:.0f} s")
    t1 = time.perf_counter()
    betas = [float(b) for b in args.betas.split(",") if b.strip()]
    res = materialize_dataset("synthetic_coupled", ["dataset_statcell"],
                              {"ops": {"dataset_statcell": {"config": {"betas": betas}}}}, inst=inst)
    if not res.success:
        raise SystemExit(run_failure(res))
    print(f"stacked beta-VAE, analyses and shape residual: {time.perf_counter() - t1:.0f} s")
    rec = wh.query("SELECT * FROM statcell_models WHERE dataset = 'synthetic_coupled'").iloc[0]
    m = json.loads(rec.metrics_json)
    c = m["coupling"]
    print(f"coupling: reconstruction NLL per cell {c['recon_true']:.1f} with the true reference, "
          f"{c['recon_shuffled']:.1f} shuffled (relative gain {c['relative_gain']:.3f}); used latent dims: "
          f"conditional {m['active_dims_conditional']}, reference {m['active_dims_reference']}; base-code variance "
          f"explained by shape {m['base_variance_explained_by_shape']:.3f}")
    print(f"generated structure volume (frame voxels, p > 0.5): small nuclei {m['generated_volume_small']:.1f} "
          f"(real {m['real_volume_small']:.1f}), large nuclei {m['generated_volume_large']:.1f} "
          f"(real {m['real_volume_large']:.1f})")
    print(wh.query("SELECT beta, reconstruction_nll, kl, active_dims FROM statcell_beta_sweep "
                   "WHERE dataset = 'synthetic_coupled' ORDER BY beta").round(3).to_string(index=False))
    plates = [f"coupled_{args.seed + k}" for k in range(args.plates)]
    for k, pid in enumerate(plates):
        write_synthetic_plate(pid, seed=args.seed + k, n_dmso=args.n_dmso, n_per_drug=args.n_per_drug, coupled=True)
        register_landing_plates(inst)
        t2 = time.perf_counter()
        _materialize(inst, dg.AssetSelection.groups("plates"), partition_key=pid,
                     run_config={"ops": {"plate_qvalues": {"config": {"null_size": args.null_size}}}})
        print(f"plate {pid}: {time.perf_counter() - t2:.0f} s")
    ph = ", ".join("?" * len(plates))
    df = wh.query(
        "SELECT q.plate_id, q.drug, coalesce(t.planted_effect, 'none') AS planted, "
        "CASE WHEN q.feature_set <> 'embedding' THEN q.feature_set WHEN m.plate_id = q.plate_id THEN 'finetuned' "
        "ELSE 'base' END AS role, q.mean_average_precision AS map, q.q_value AS q, q.is_hit "
        "FROM drug_qvalues q LEFT JOIN models m ON m.model_version = q.model_version "
        "LEFT JOIN drug_truth t ON t.plate_id = q.plate_id AND t.drug = q.drug "
        f"WHERE q.plate_id IN ({ph}) ORDER BY q.drug, q.plate_id, role", plates)
    print(df.pivot_table(index=["drug", "planted", "plate_id"], columns="role", values="q",
                         aggfunc="first").round(4).to_string())
    print(df.pivot_table(index=["drug", "planted"], columns="role", values="map", aggfunc="mean").round(3)
          .to_string())
    parts = []
    for role, g in df.groupby("role"):
        calls = {e: f"{int(g[g.planted == e].is_hit.sum())}/{int((g.planted == e).sum())}"
                 for e in ("nucleus_size", "structure_size", "none")}
        parts.append(f"{role}:nucleus_only={calls['nucleus_size']},structure_only={calls['structure_size']},"
                     f"null={calls['none']}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    print(" ".join(parts))


if __name__ == "__main__":
    main()
