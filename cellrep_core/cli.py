"""The ``cellrep`` command: read-only SQL, nearest cells, synthetic plates (Dagster commands live in
``orchestration.cli``, which extends this parser)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from cellrep_core import paths
from cellrep_core.errors import CorruptFileError
from cellrep_core.store.feature_store import FeatureStore
from cellrep_core.store.warehouse import Warehouse
from cellrep_core.structures import KIND_OF_SHAPE


def embedding_tables(as_of: datetime | None = None) -> dict:
    """The LanceDB embedding tables as Arrow tables, as they are now or as they were at ``as_of``."""
    out = {}
    if paths.lancedb_path().exists():
        fs = FeatureStore()
        for name in fs.table_names():
            try:
                out[name] = fs.open_table(name, as_of=as_of).to_arrow()
            except LookupError:  # the table did not exist yet at as_of: it was empty then
                out[name] = fs.db.open_table(name).schema.empty_table()
    return out


def connect_readonly(with_embeddings: bool = True, as_of: datetime | None = None,
                     tables: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Read-only DuckDB connection to the warehouse with the LanceDB embedding tables visible as views
    (vectors as ``FLOAT[d]``), as they are now or as they were at ``as_of`` (``tables``: already read). Open and
    use it inside ``Warehouse().shared_lock()``, as ``run_sql`` does."""
    wh = Warehouse()
    if not wh.path.exists():
        with wh.write():
            pass
    con = duckdb.connect(str(wh.path), read_only=True)
    if with_embeddings:
        for name, arrow in (embedding_tables(as_of) if tables is None else tables).items():
            con.register(name, arrow)
    # the SQL surface reads the warehouse and the embedding tables only: no files (COPY ... TO, read_csv, glob,
    # ATTACH), no extensions, and a query cannot switch that back on
    for setting in ("enable_external_access = false", "autoinstall_known_extensions = false",
                    "autoload_known_extensions = false", "lock_configuration = true"):
        con.execute(f"SET {setting}")
    return con


def run_sql(sql: str, fmt: str = "table", out: Path | None = None, as_of: datetime | None = None) -> pd.DataFrame:
    """Run read-only SQL; writes fail with a clear message. ``as_of`` reads the embeddings as of a date. The query
    runs under the warehouse's shared lock: it waits for a commit in progress instead of failing on DuckDB's file
    lock, and a writer waits for it."""
    tables = embedding_tables(as_of)  # read before taking the lock: writers wait only for the query itself
    wh = Warehouse()
    with wh.shared_lock():
        return _run_sql_locked(sql, fmt, out, as_of, tables)


def _run_sql_locked(sql: str, fmt: str, out: Path | None, as_of: datetime | None, tables: dict) -> pd.DataFrame:
    con = connect_readonly(as_of=as_of, tables=tables)
    try:
        df = con.execute(sql).df()
    except duckdb.PermissionException as err:
        raise PermissionError(
            "cellrep sql reads the warehouse and the embedding tables only: files (COPY ... TO, read_csv, "
            f"glob, ATTACH) and extensions are disabled; export with --out instead (DuckDB said: {err})"
        ) from err
    except duckdb.InvalidInputException as err:
        if "configuration has been locked" in str(err):
            raise PermissionError(f"cellrep sql cannot change DuckDB's settings (DuckDB said: {err})") from err
        if "read-only" in str(err).lower() or "read only" in str(err).lower():
            raise PermissionError(
                "cellrep sql is read-only: the warehouse is written only by the pipeline's assets "
                f"(DuckDB said: {err})"
            ) from err
        raise
    finally:
        con.close()
    if out is not None:
        (df.to_parquet if fmt == "parquet" else df.to_csv)(out, index=False)
    return df


def embed_file(path: Path, channels: str = "", shape_type: str = "polymorphic",
               model_version: str | None = None) -> tuple[np.ndarray, str]:
    """Embed a cell file on the fly: a single-cell (OME-)TIFF (sampled like ingested cells) or a point
    cloud ``.npy`` ``[n, 3]`` (surface points, polymorphic) / ``[n, 4]`` (x, y, z, intensity, punctate)
    in the model's normalised coordinates. Returns (code, model version)."""
    from cellrep_core import pipeline
    from cellrep_core.models.inference import embed_items, inference_device, load_model
    from cellrep_core.pointclouds.build import SamplingConfig, process_cell
    from cellrep_core.pointclouds.items import CloudItem

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if path.suffix == ".npy":
        pts = np.load(path)
        if pts.ndim != 2 or pts.shape[1] not in (3, 4) or not np.isfinite(pts).all():
            raise ValueError(f"{path}: a point cloud must be a finite [n, 3] or [n, 4] array, got {pts.shape}")
        shape_type = "punctate" if pts.shape[1] == 4 else "polymorphic"
        item = CloudItem(path.stem, pts.astype(np.float32))
    else:
        if not channels:
            raise ValueError("give --channels for an image file (e.g. 'nucleus;structure')")
        row = {"cell_id": path.stem, "source_path": str(path), "channels": channels, "shape_type": shape_type,
               "dataset": "", "plate_id": "", "voxel_size_um": 1.0}
        res = process_cell(row, SamplingConfig())
        if not res["ok"]:
            q = res["row"]
            raise ValueError(f"{path} cannot be embedded: {q['reason']}: {q['detail']}")
        item = CloudItem(path.stem, res["points"], res["sdf"])
    wh = Warehouse()
    base = pipeline.BASE_DATASET_OF_SHAPE[shape_type]
    tm = pipeline.model_by_version(wh, model_version) if model_version else pipeline.latest_model(wh, base)
    if tm.config.kind != KIND_OF_SHAPE[shape_type]:
        raise ValueError(f"model {tm.version} is a {tm.config.kind} model; it cannot embed a {shape_type} cell")
    return embed_items(load_model(tm.path, inference_device()), [item])[0], tm.version


SEARCH_SPACES = ("profiling", "raw")


def _base_version_of_cell(wh: Warehouse, versions: list[str]) -> str | None:
    """Of the model versions that embedded a cell, the latest base model's (no plate of its own)."""
    if not versions:
        return None
    df = wh.query(f"SELECT model_version FROM models WHERE model_version IN ({', '.join('?' * len(versions))}) "
                  "AND coalesce(plate_id, '') = '' ORDER BY trained_at DESC", list(versions))
    return df.model_version.iloc[0] if len(df) else None


def _explain_empty(fs: FeatureStore, filters: dict, version: str) -> str:
    """Why a search found nothing: which model versions embedded the cells the filters select."""
    other = {k: v for k, v in filters.items() if k != "model_version"}
    if not other:
        return f"model {version} has embedded no cells"
    metas = [fs.load(other, table=t)[0] for t in fs.table_names()]
    meta = pd.concat(metas) if metas else pd.DataFrame()
    if meta.empty:
        return f"no stored cell matches {other}"
    have = sorted(set(meta.model_version))
    return (f"no cell matching {other} was embedded by model {version}; those cells were embedded by {have}: "
            "search one of those spaces (--model-version) or embed them with this model")


def nearest_cells(cell_id: str | None = None, vector: np.ndarray | None = None, k: int = 10,
                  model_version: str | None = None, filters: dict | None = None,
                  file: Path | None = None, channels: str = "", shape_type: str = "polymorphic",
                  space: str = "profiling") -> pd.DataFrame:
    """The k nearest stored cells to a stored cell, a vector or a cell file, with metadata and distance.

    The model version (the space) defaults to the base model, which embeds every plate, not the query cell's
    plate's fine-tuned model, which has seen that plate only. ``space="profiling"`` (default) compares codes as
    drug profiling does: whitened by the model's whitening, cosine distance, exact over the rows the filters
    select (raw codes of unrelated cells sit 1e-4 to 1e-3 apart in cosine: one shared direction dominates them;
    a large table with few filters is better searched with ``space="raw"``, which uses the ANN index);
    ``space="raw"`` is the feature store's cosine search on raw codes (ANN index above 30k rows). An empty
    answer is an error that says which model versions embedded the cells asked for."""
    from cellrep_core import pipeline
    from cellrep_core.models.whitening import load_whitening

    if space not in SEARCH_SPACES:
        raise ValueError(f"space must be one of {SEARCH_SPACES}, got {space!r}")
    fs = FeatureStore()
    wh = Warehouse()
    filters = dict(filters or {})
    if file is not None:
        vector, model_version = embed_file(Path(file), channels, shape_type, model_version)
    if cell_id is not None:
        rows = [(t, *fs.load({"cell_id": cell_id}, table=t)) for t in fs.table_names()]
        rows = [(t, m, v) for t, m, v in rows if len(m)]
        if not rows:
            raise LookupError(f"cell {cell_id} has no embedding; ingest or embed it first")
        found = {m.at[i, "model_version"]: v[i] for _, m, v in rows for i in range(len(m))}
        if model_version is None:
            model_version = _base_version_of_cell(wh, list(found)) or next(reversed(found))
        if model_version not in found:
            raise LookupError(f"cell {cell_id} has no embedding by model {model_version}; it has {sorted(found)}")
        vector = found[model_version]
    if vector is None:
        raise ValueError("give a cell id, a vector or a file")
    vector = np.asarray(vector, np.float32).reshape(-1)
    if model_version:
        filters["model_version"] = model_version
    if space == "raw" or not model_version:
        out = fs.nearest(vector, k=k, filters=filters)
    else:
        meta, vecs = fs.load(filters, table=fs.table_for_dim(len(vector)))
        if len(meta):
            w = load_whitening(pipeline.model_by_version(wh, model_version).path)
            a, q = w.transform(vecs).astype(np.float64), w.transform(vector[None]).astype(np.float64)[0]
            sim = a @ q / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(q), 1e-12)
            order = np.argsort(-sim, kind="stable")[:k]
            out = meta.iloc[order].reset_index(drop=True).assign(distance=1.0 - sim[order])
        else:
            out = meta.assign(distance=pd.Series(dtype=float))
    if out.empty:
        raise LookupError(_explain_empty(fs, filters, model_version or "(any)"))
    return out


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of the pure (Dagster-free) commands."""
    p = argparse.ArgumentParser(prog="cellrep", description="Rotation-invariant 3D single-cell representations.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sql", help="read-only SQL over the warehouse (embeddings included)")
    s.add_argument("query")
    s.add_argument("--format", choices=["table", "csv", "parquet"], default="table")
    s.add_argument("--out", type=Path)
    s.add_argument("--as-of", type=datetime.fromisoformat, metavar="DATETIME",
                   help="read the embedding tables as they were then (UTC, e.g. 2026-11-20T12:00)")
    n = sub.add_parser("nearest", help="nearest real cells to a cell or a vector")
    n.add_argument("--cell-id")
    n.add_argument("--vector", help="comma-separated floats")
    n.add_argument("--file", type=Path, help="a cell image (TIFF) or point cloud (.npy), embedded on the fly")
    n.add_argument("--channels", default="", help="channels of --file, e.g. 'nucleus;structure'")
    n.add_argument("--shape-type", default="polymorphic", choices=["polymorphic", "punctate"])
    n.add_argument("-k", type=int, default=10)
    n.add_argument("--model-version", help="the space to search (default: the base model, shared by every plate)")
    n.add_argument("--space", choices=SEARCH_SPACES, default="profiling",
                   help="profiling: whitened codes as drug profiling compares them (default); raw: raw codes, ANN")
    for col in ("dataset", "plate_id", "drug", "structure_name"):
        n.add_argument(f"--{col.replace('_', '-')}")
    sp = sub.add_parser("synth-plate", help="write a synthetic drug plate (manifest + images) into a folder")
    sp.add_argument("--plate-id", required=True)
    sp.add_argument("--out", type=Path, help="default: $CELLREP_HOME/landing/plates/<plate-id>")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--n-dmso", type=int, default=32)
    sp.add_argument("--n-per-drug", type=int, default=20)
    sp.add_argument("--drug", action="append", default=[], metavar="NAME=EFFECT",
                    help="drug and planted effect (none, shrink, fragment, elongate; with --mixed also peripheral, "
                         "central for the punctate structure, or both joined by '+'); repeatable")
    sp.add_argument("--mixed", action="store_true", help="two structures in every well: polymorphic nucleolus-like "
                                                         "cells and punctate foci cells, each routed to its base model")
    sp.add_argument("--coupled", action="store_true",
                    help="coupled_nucleolus cells whose structure scales with the nucleus; effects none, "
                         "nucleus_size (the nucleus shrinks, the structure follows), structure_size (the structure "
                         "shrinks within a usual nucleus); default drugs nuc_small, struct_small, null_a, null_b")
    sc = sub.add_parser("synth-coupled-set", help="write a reference data set of coupled_nucleolus cells (structure "
                                                  "volume a fraction of the nucleus volume) + manifest.csv")
    sc.add_argument("out", type=Path)
    sc.add_argument("--n-cells", type=int, default=160)
    sc.add_argument("--seed", type=int, default=31)
    ss = sub.add_parser("synth-screen", help="write a synthetic screen (replicate plates, dose series, nuisance) "
                                             "into the landing folder")
    ss.add_argument("--screen-id", required=True)
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("--out", type=Path, help="folder the plates are written into; default: the landing folder")
    ss.add_argument("--drug", action="append", default=[], metavar="NAME=EFFECT[:MAX_STRENGTH]",
                    help="drug, effect (none, shrink, fragment, elongate, unequal, flatten) and its strength at the "
                         "top concentration (default 1); repeatable; default: one drug per effect and three nulls")
    ss.add_argument("--concentrations", default="0.3,1,3", help="µM, comma-separated (default 0.3,1,3)")
    ss.add_argument("--replicates", type=int, default=2)
    ss.add_argument("--n-per-well", type=int, default=12)
    ss.add_argument("--n-dmso-wells", type=int, default=6)
    ss.add_argument("--no-nuisance", action="store_true", help="no batch, edge, cell-cycle, debris or "
                                                               "segmentation nuisance")
    st = sub.add_parser("store", help="feature store upkeep: repair a LanceDB table whose data files are torn")
    st.add_argument("store_command", choices=["repair"])
    st.add_argument("--table", help="one embedding table (default: every one)")
    ex = sub.add_parser("explain", help="explain a drug: LDA axis against DMSO, real cells along it, DMSO-split "
                                        "baseline; writes one self-contained HTML report")
    scope = ex.add_mutually_exclusive_group(required=True)
    scope.add_argument("--screen", help="a screen id (pools its replicate plates)")
    scope.add_argument("--plate", help="a plate id")
    ex.add_argument("--drug", required=True)
    ex.add_argument("--concentration", type=float, help="µM; default: the highest concentration at which the base "
                                                         "model calls the drug a hit, else its highest")
    ex.add_argument("--out", type=Path, help="folder of the report; default: $CELLREP_HOME/reports/explain/...")
    ex.add_argument("--structure", help="on a plate or screen of several structures: which one (structure_name)")
    return p


def default_concentration(wh, data, drug: str) -> float | None:
    """The highest concentration of a drug that is a base-model hit in the scope, else its highest one."""
    from cellrep_core.analysis.explain import base_hits

    hit = [c for d, c in base_hits(wh, data.scope, data.scope_id, data.structure) if d == drug and c is not None]
    conc = pd.to_numeric(data.meta.concentration[data.meta.drug.astype(str) == drug], errors="coerce").dropna()
    return max(hit) if hit else (float(conc.max()) if len(conc) else None)


def explain_command(screen: str | None, plate: str | None, drug: str, concentration: float | None,
                    out: Path | None, structure: str | None = None) -> tuple[Path, dict]:
    """``cellrep explain``: the report of one drug (at one concentration) of a screen or plate."""
    from cellrep_core.analysis.explain import ScopeDecoder, explain_treatment, load_scope, write_report
    from cellrep_core.store.warehouse import Warehouse

    wh = Warehouse()
    data = load_scope(wh, FeatureStore(), plate_id=plate, screen_id=screen, structure=structure)
    if concentration is None:
        concentration = default_concentration(wh, data, drug)
    expl = explain_treatment(data, drug, concentration)
    path = write_report(wh, expl, out or paths.explain_reports_dir(data.scope, data.scope_id) / data.structure,
                        ScopeDecoder(wh, data))
    return path, expl.summary()


def write_synthetic_screen(screen_id: str, seed: int = 0, drugs: list[str] | None = None,
                           concentrations: tuple[float, ...] = (0.3, 1.0, 3.0), replicates: int = 2,
                           n_per_well: int = 12, n_dmso_wells: int = 6, nuisance: bool = True,
                           out: Path | None = None, n_bad: int = 0) -> list[Path]:
    """Write a synthetic screen's replicate plates (each folder's manifest last, so each is picked up whole)."""
    from cellrep_core.data import screen

    specs = [screen.Drug.parse(d) for d in drugs] if drugs else [screen.Drug(n, e) for n, e in
                                                                 screen.DEFAULT_SCREEN_DRUGS]
    spec = screen.ScreenSpec(screen_id, seed, specs, tuple(concentrations), replicates, n_per_well, n_dmso_wells,
                             nuisance=screen.Nuisance() if nuisance else screen.Nuisance.off(), n_bad=n_bad)
    return screen.generate_screen(spec, Path(out) if out else paths.landing_plates_dir())


def write_synthetic_plate(plate_id: str, out: Path | None = None, seed: int = 0, n_dmso: int = 32,
                          n_per_drug: int = 20, drugs: dict[str, str] | None = None, n_bad: int = 2,
                          mixed: bool = False, coupled: bool = False) -> Path:
    """Write a synthetic plate into a folder, manifest last (written then renamed) so it is picked up complete.
    ``mixed``: a polymorphic and a punctate structure in every well (``plates.generate_mixed_plate``);
    ``coupled``: structure coupled to the nucleus, nucleus-only and structure-only drugs (``data/coupled.py``)."""
    from cellrep_core.data import plates

    out = Path(out) if out else paths.landing_plates_dir() / plate_id
    if coupled:
        from cellrep_core.data.coupled import generate_coupled_plate

        generate_coupled_plate(out, plate_id, seed=seed, n_dmso=n_dmso, n_per_drug=n_per_drug, drugs=drugs)
        return out
    if mixed:
        effects = {k: plates.parse_mixed_effect(v) for k, v in drugs.items()} if drugs else None
        plates.generate_mixed_plate(out, plate_id, seed=seed, n_dmso=n_dmso, n_per_drug=n_per_drug, drugs=effects)
        return out
    plates.generate_drug_plate(out, plate_id, seed=seed, n_dmso=n_dmso, n_per_drug=n_per_drug,
                               drugs=drugs, n_bad=n_bad)
    return out


def run(args: argparse.Namespace) -> int:
    """Execute a parsed pure command."""
    if args.command == "sql":
        df = run_sql(args.query, args.format, args.out, as_of=args.as_of)
        if args.out is None:
            print(df.to_csv(index=False) if args.format == "csv" else df.to_string(index=False))
        return 0
    if args.command == "nearest":
        filters = {c: getattr(args, c) for c in ("dataset", "plate_id", "drug", "structure_name") if getattr(args, c)}
        vec = np.array([float(v) for v in args.vector.split(",")]) if args.vector else None
        df = nearest_cells(args.cell_id, vec, args.k, args.model_version, filters,
                           file=args.file, channels=args.channels, shape_type=args.shape_type, space=args.space)
        print(df.to_string(index=False))
        return 0
    if args.command == "synth-plate":
        drugs = dict(d.split("=", 1) for d in args.drug) or None
        if args.mixed and args.coupled:
            raise ValueError("--mixed and --coupled are two kinds of plate; choose one")
        out = write_synthetic_plate(args.plate_id, args.out, args.seed, args.n_dmso, args.n_per_drug, drugs,
                                    mixed=args.mixed, coupled=args.coupled)
        print(f"wrote plate {args.plate_id} to {out}")
        return 0
    if args.command == "synth-coupled-set":
        from cellrep_core.data.coupled import generate_coupled_dataset

        df = generate_coupled_dataset(args.out, n_cells=args.n_cells, seed=args.seed)
        print(f"wrote {len(df)} coupled cells and {args.out / 'manifest.csv'}")
        return 0
    if args.command == "synth-screen":
        try:
            concs = tuple(float(c) for c in args.concentrations.split(",") if c.strip())
        except ValueError:
            raise ValueError(f"--concentrations {args.concentrations!r}: expected µM numbers, e.g. 0.3,1,3") from None
        folders = write_synthetic_screen(args.screen_id, args.seed, args.drug, concs, args.replicates,
                                         args.n_per_well, args.n_dmso_wells, not args.no_nuisance, args.out)
        for f in folders:
            print(f"wrote plate {f.name} of screen {args.screen_id} to {f}")
        return 0
    if args.command == "store":
        fs = FeatureStore()
        tables = [args.table] if args.table else fs.table_names()
        for t in tables:
            if t not in fs.table_names():
                raise ValueError(f"no embedding table {t!r}; tables: {', '.join(fs.table_names()) or 'none'}")
            res = fs.repair(t)
            print(f"{t}: rolled back to version {res['restored_version']} ({res['rows']} rows; torn: "
                  f"{', '.join(res['torn_files']) or 'none found'}; torn manifests moved to {t}.lance/_torn); "
                  "materialize the embeddings again"
                  if res["repaired"] else f"{t}: reads whole (version {res['version']}), nothing to repair")
        return 0
    if args.command == "explain":
        path, summary = explain_command(args.screen, args.plate, args.drug, args.concentration, args.out,
                                        args.structure)
        for k, v in summary.items():
            print(f"{k}: {v}")
        print(f"report: {path}")
        return 0
    raise SystemExit(f"unknown command {args.command}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (PermissionError, LookupError, ValueError, CorruptFileError) as err:
        print(f"cellrep: {err}", file=sys.stderr)
        return 2
    except duckdb.Error as err:  # a SQL mistake (unknown table or column, syntax): DuckDB's message, no traceback
        print(f"cellrep: {err}", file=sys.stderr)
        return 2
