"""Plates of two structures: is each structure profiled by the right base model, and are planted effects found
in both?

On a storage root of its own: trains the two synthetic base models (demo configs), writes mixed plates (every
well holds polymorphic nucleolus-like cells and punctate foci cells; seeds no other run uses), runs each through
the plate assets and prints, per structure and drug, the planted effect and the q-values of the base model
(zero-shot), the plate's fine-tuned model of that structure and the hand-crafted features (polymorphic only).
Last line: planted effects found / planted, null drugs called, per structure and feature set.

    CELLREP_HOME=.cellrep-bench-mixed python benchmarks/bench_mixed_plate.py [--plates 2] [--n-per-drug 16]
"""

from __future__ import annotations

import argparse
import os
import time

import dagster as dg

DRUGS = {"shrinkol": "shrink", "fragmol": "fragment", "periphin": "peripheral", "centrin": "central",
         "inertol": "none", "inertase": "none"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plates", type=int, default=2)
    ap.add_argument("--n-per-drug", type=int, default=16)
    ap.add_argument("--n-dmso", type=int, default=32)
    ap.add_argument("--seed", type=int, default=7001)
    ap.add_argument("--null-size", type=int, default=10000)
    args = ap.parse_args()
    os.environ.setdefault("CELLREP_HOME", os.path.abspath(".cellrep-bench-mixed"))

    from cellrep_core.cli import write_synthetic_plate
    from cellrep_core.store.warehouse import Warehouse
    from orchestration.demo import _materialize, instance, register_landing_plates

    inst = instance()
    t0 = time.perf_counter()
    refs = [f"{ds}_{a}" for ds in ("synthetic_polymorphic", "synthetic_punctate") for a in ("cells", "pointclouds",
                                                                                              "model")]
    _materialize(inst, dg.AssetSelection.assets(*refs))
    print(f"base models: {time.perf_counter() - t0:.0f} s")
    wh = Warehouse()
    plates = [f"mixed_{args.seed + k}" for k in range(args.plates)]
    for k, pid in enumerate(plates):
        write_synthetic_plate(pid, seed=args.seed + k, n_dmso=args.n_dmso, n_per_drug=args.n_per_drug,
                              drugs=DRUGS, mixed=True)
        register_landing_plates(inst)
        t1 = time.perf_counter()
        _materialize(inst, dg.AssetSelection.groups("plates"), partition_key=pid,
                     run_config={"ops": {"plate_qvalues": {"config": {"null_size": args.null_size}}}})
        print(f"plate {pid}: {time.perf_counter() - t1:.0f} s")
    ph = ", ".join("?" * len(plates))
    df = wh.query(
        "SELECT q.plate_id, q.structure_name, q.drug, coalesce(t.planted_effect, 'none') AS planted, "
        "CASE WHEN q.feature_set = 'handcrafted' THEN 'handcrafted' WHEN m.plate_id = q.plate_id THEN 'finetuned' "
        "ELSE 'base' END AS role, m.dataset AS model_of, q.mean_average_precision AS map, q.q_value AS q, q.is_hit "
        "FROM drug_qvalues q LEFT JOIN models m ON m.model_version = q.model_version "
        "LEFT JOIN drug_truth t ON t.plate_id = q.plate_id AND t.drug = q.drug AND t.structure_name = q.structure_name "
        f"WHERE q.plate_id IN ({ph}) ORDER BY q.structure_name, q.drug, q.plate_id, role", plates)
    wide = df.pivot_table(index=["structure_name", "drug", "planted", "plate_id"], columns="role", values="q",
                          aggfunc="first").round(4)
    print(wide.to_string())
    routed = df[df.role == "base"].groupby("structure_name").model_of.unique()
    print("\nbase model data set per structure:", {k: list(v) for k, v in routed.items()})
    parts = []
    for (structure, role), g in df.groupby(["structure_name", "role"]):
        planted = g[g.planted != "none"]
        null = g[g.planted == "none"]
        parts.append(f"{structure}/{role}:found={int(planted.is_hit.sum())}/{len(planted)},"
                     f"null_calls={int(null.is_hit.sum())}/{len(null)}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    print(" ".join(parts))


if __name__ == "__main__":
    main()
