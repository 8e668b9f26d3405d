"""``cellrep`` with the orchestration commands added: ``demo``, ``ui``, ``ui-check``, ``dataset`` and ``ingest``."""

from __future__ import annotations

import logging
import sys

import duckdb

from cellrep_core import cli as core_cli


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellrep`` console script."""
    parser = core_cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    d = sub.add_parser("demo", help="materialize the whole asset graph on the embedded synthetic data")
    d.add_argument("--null-size", type=int, default=10000)
    d.add_argument("--quick", action="store_true", help="tiny data and models (smoke test)")
    u = sub.add_parser("ui", help="serve the Dagster UI and daemon on 127.0.0.1 (Ctrl-C stops everything)")
    u.add_argument("--port", type=int, default=3000)
    u.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the UI, which has no "
                        "login, to the network)")
    uc = sub.add_parser("ui-check", help="open the hit explanation in headless Chromium through the Dagster UI and "
                                         "save a screenshot (needs the chromium and chromium-driver packages)")
    uc.add_argument("--out", default="", help="screenshot PNG; default: $CELLREP_HOME/reports/ui_hit_explanation.png")
    _add_dataset_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("dataset", "ingest", "statcell"):
        try:
            return _dataset_command(args)
        except (LookupError, ValueError) as err:
            print(f"cellrep: {err}", file=sys.stderr)
            return 2
    if args.command == "ui-check":
        from pathlib import Path

        from cellrep_core import paths
        from orchestration.ui_check import UICheckError, check_hit_explanation

        try:
            seen = check_hit_explanation(Path(args.out) if args.out else
                                         paths.cellrep_home() / "reports" / "ui_hit_explanation.png")
        except UICheckError as err:
            print(f"cellrep ui-check: {err}", file=sys.stderr)
            return 1
        print(", ".join(f"{k}: {v}" for k, v in seen.items()))
        return 0
    if args.command == "ui":
        from orchestration.serve import serve

        return serve(host=args.host, port=args.port)
    if args.command == "demo":
        from orchestration.demo import run_demo

        logging.basicConfig(level=logging.WARNING)
        run_demo(null_size=args.null_size, quick=args.quick)
        return 0
    try:
        return core_cli.run(args)
    except (PermissionError, LookupError, ValueError) as err:
        print(f"cellrep: {err}", file=sys.stderr)
        return 2
    except duckdb.Error as err:  # a SQL mistake (unknown table or column, syntax): DuckDB's message, no traceback
        print(f"cellrep: {err}", file=sys.stderr)
        return 2


def _add_dataset_commands(sub) -> None:
    from pathlib import Path

    ig = sub.add_parser("ingest", help="register a manifest as a data set and materialize its cells, point clouds "
                                       "and embeddings (the dataset_* assets)")
    ig.add_argument("manifest", type=Path)
    ig.add_argument("--data-root", type=Path, help="a second folder the manifest's paths may point into")
    ig.add_argument("--dataset", help="default: the manifest's dataset column, else its folder name")
    ig.add_argument("--model-version", help="embed with this model version (default: the data set's own base "
                                            "model, else the platform's base model of its shape type)")
    ig.add_argument("--workers", type=int, help="processes for point-cloud sampling (default: all cores)")
    ds = sub.add_parser("dataset", help="your own data sets as assets: add, list, materialize")
    dsub = ds.add_subparsers(dest="dataset_command", required=True)
    add = dsub.add_parser("add", help="register a manifest as data set NAME (a partition of the dataset_* assets)")
    add.add_argument("name")
    add.add_argument("manifest", type=Path)
    add.add_argument("--data-root", type=Path, help="a second folder the manifest's paths may point into")
    add.add_argument("--model", default="", help="model config of its base model (default by shape type: "
                                                 "sdf_demo or punctate_demo)")
    add.add_argument("--warm-start", default="", help="start training from this data set's base model (or model "
                                                      "version) instead of from scratch")
    add.add_argument("--half-extent-vox", type=float, help="SDF box half-extent in voxels (default 32)")
    add.add_argument("--target-voxel-um", type=float, help="working voxel size (default: derived from the data so "
                                                           "that every structure fits the box)")
    add.add_argument("--per-cell-scale", action="store_true",
                     help="scale each polymorphic cell to its own SDF box (mixed-size sets; sizes then live only in "
                          "the hand-crafted features)")
    add.add_argument("--base-for", action="append", default=[], metavar="STRUCTURE",
                     help="plates route cells of this structure_name to this data set's base model; repeatable")
    add.add_argument("--materialize", action="store_true", help="then materialize cells → embeddings here")
    add.add_argument("--max-epochs", type=int, default=0, help="epoch override of the base model's training")
    dsub.add_parser("list", help="registered data sets with their scale and what is materialized")
    mat = dsub.add_parser("materialize", help="materialize a data set's assets in this process (the run shows in "
                                              "the UI)")
    mat.add_argument("name")
    mat.add_argument("--max-epochs", type=int, default=0, help="epoch override of the base model's training")
    mat.add_argument("--benchmark", action="store_true", help="also the benchmark of its model config")
    st = sub.add_parser("statcell", help="train the model of structure given cell shape (seed 003) on a data set: "
                                         "coupling, beta sweep, generations, and the structure_given_shape profile "
                                         "of plates routed to it (asset dataset_statcell)")
    st.add_argument("name")
    st.add_argument("--max-epochs", type=int, default=0, help="epoch override of both beta-VAEs")
    st.add_argument("--betas", default=",".join(f"{b:g}" for b in (0.25, 1, 4, 16)),
                    help="betas of the rate-distortion sweep, comma-separated ('' for no sweep)")
    st.add_argument("--tiny", action="store_true", help="the tiny test configs (16^3 volumes, 3 epochs)")
    st.add_argument("--force", action="store_true", help="retrain even when the versions exist")


def _dataset_command(args) -> int:
    from cellrep_core import datasets
    from cellrep_core.store.warehouse import Warehouse
    from orchestration import datasets as odatasets

    logging.basicConfig(level=logging.WARNING)
    if args.command == "statcell":
        return _statcell_command(args)
    if args.command == "ingest":
        for line in odatasets.ingest_command(args.manifest, args.data_root, args.dataset, args.model_version,
                                             args.workers):
            print(line)
        return 0
    if args.dataset_command == "list":
        wh = Warehouse()
        names = datasets.list_names(wh)
        if not names:
            print("no data set registered; `cellrep dataset add NAME MANIFEST` registers one")
            return 0
        df = wh.query("SELECT d.name, d.shape_type, d.structures, d.n_rows, d.target_voxel_um, d.scale_source, "
                      "d.model, (SELECT count(*) FROM cells c WHERE c.dataset = d.name) AS cells, "
                      "(SELECT count(*) FROM pointcloud_index p WHERE p.dataset = d.name) AS clouds, "
                      "(SELECT max(model_version) FROM models m WHERE m.dataset = d.name) AS model_version "
                      "FROM datasets d ORDER BY d.name")
        print(df.to_string(index=False))
        return 0
    if args.dataset_command == "add":
        spec = odatasets.register_dataset(args.name, args.manifest, args.data_root, args.model, args.warm_start,
                                          args.half_extent_vox, args.target_voxel_um, args.per_cell_scale)
        print(datasets.describe(spec))
        for structure in args.base_for:
            from cellrep_core import structures

            structures.set_base(Warehouse(), structure, spec.name)
            print(f"plates route structure {structure} to the base model of {spec.name}")
        if not args.materialize:
            print(f"registered; materialize it from the Dagster UI (group datasets, partition {spec.name}), with "
                  f"`cellrep dataset materialize {spec.name}`, or let the daemon's automation do it")
            return 0
    name = args.name
    assets = list(odatasets.CHAIN) + (["dataset_benchmark"] if getattr(args, "benchmark", False) else [])
    cfg = {"ops": {k: {"config": {"max_epochs": args.max_epochs}} for k in ("dataset_model", "dataset_benchmark")
                   if k in assets}} if args.max_epochs else {}
    res = odatasets.materialize_dataset(name, assets, cfg)
    for ev in res.get_asset_materialization_events():
        mat = ev.materialization
        md = {k: v.value for k, v in mat.metadata.items() if k in ("cells", "clouds", "quarantined", "model_version",
                                                                     "reused", "dim", "stage_seconds")}
        print(f"{mat.asset_key.to_user_string()}[{name}]: {md}")
    if not res.success:
        print(f"cellrep: {odatasets.run_failure(res)}", file=sys.stderr)
        return 1
    return 0


def _statcell_command(args) -> int:
    from orchestration import datasets as odatasets

    try:
        betas = [float(b) for b in args.betas.split(",") if b.strip()]
    except ValueError:
        raise ValueError(f"--betas {args.betas!r}: expected numbers, e.g. 0.25,1,4,16") from None
    size = "tiny" if args.tiny else "demo"
    cfg = {"ops": {"dataset_statcell": {"config": {
        "max_epochs": args.max_epochs, "betas": betas, "force": args.force,
        "ref_config": f"statcell_ref_{size}", "cond_config": f"statcell_cond_{size}"}}}}
    res = odatasets.materialize_dataset(args.name, ["dataset_statcell"], cfg)
    if not res.success:
        print(f"cellrep: {odatasets.run_failure(res)}", file=sys.stderr)
        return 1
    for ev in res.get_asset_materialization_events():
        md = ev.materialization.metadata
        for k in ("ref_version", "cond_version", "base_version", "sgs_version", "n_cells", "n_skipped",
                  "coupling_gain", "recon_true", "recon_shuffled", "active_dims", "shape_explained",
                  "generated_volume_small", "generated_volume_large", "real_volume_small", "real_volume_large",
                  "report_dir"):
            if k in md:
                v = md[k].value
                print(f"{k}: {round(v, 4) if isinstance(v, float) else v}")
    return 0

