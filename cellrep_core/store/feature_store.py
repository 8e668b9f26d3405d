"""The LanceDB feature store of cell embeddings, keyed by (cell_id, model_version).

Correct without file locks: the key columns are declared the table's unenforced primary key (field metadata
``lance-schema:unenforced-primary-key``, non-nullable), which makes concurrent ``merge_insert`` commits of the
same new keys conflict and retry instead of both inserting (without it, two processes inserting the same new
keys left duplicates, on local disk and on S3); a commit that still conflicts is retried a bounded number of
times (``MAX_COMMIT_RETRIES``) and the retries are counted. The writer file lock stays on by default on local
disk (it costs nothing and keeps writers from redoing work); ``lock=False`` or ``CELLREP_FS_LOCK=0`` turns it
off, as object storage has no shared file lock. Tables from before the primary key are migrated on their next
write (rewritten with the key schema as a new version; earlier versions stay readable).
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import lancedb
import numpy as np
import pandas as pd
import pyarrow as pa
from filelock import FileLock
from lancedb.index import IvfHnswSq

from cellrep_core import faults, paths
from cellrep_core.errors import CorruptFileError

TABLE = "cell_embeddings"
META_COLUMNS = ["cell_id", "dataset", "plate_id", "drug", "structure_name", "model_name", "model_version"]
KEY = ["cell_id", "model_version"]

# ANN index: below ANN_MIN_ROWS rows an exact (flat) scan is as fast as an indexed query; above it the
# table gets an IVF-HNSW index (scalar-quantised) whose hits are refined on the full vectors. Measured
# here (256-d, one query, p50): 20k rows flat 16.5 ms / indexed 17.2 ms; 50k rows flat 63 ms / indexed
# 17 ms; 1M rows indexed 18 ms at recall@10 0.995 (benchmarks/bench_search.py).
ANN_MIN_ROWS = 30_000
ANN_INDEX_TYPE = "IVF_HNSW_SQ"
ANN_NPROBES = 10
ANN_REFINE = 2
ANN_REINDEX_FRACTION = 0.1
LANCE_FORMAT = "2.1"
PK_MARKER = "lance-schema:unenforced-primary-key"
MAX_COMMIT_RETRIES = 8


def table_schema(dim: int) -> pa.Schema:
    """An embedding table's schema: metadata strings (the key columns non-nullable and marked as the unenforced
    primary key) and a fixed-size float32 vector."""
    fields = [pa.field(c, pa.string(), nullable=c not in KEY, metadata={PK_MARKER: "true"} if c in KEY else None)
              for c in META_COLUMNS]
    return pa.schema([*fields, pa.field("vector", pa.list_(pa.float32(), dim))])


def has_primary_key(schema: pa.Schema) -> bool:
    """Whether every key column carries the primary-key marker."""
    return all((schema.field(c).metadata or {}).get(PK_MARKER.encode(), b"").decode().lower() == "true"
               for c in KEY)


def _retryable(err: Exception) -> bool:
    msg = str(err).lower()
    return any(w in msg for w in ("conflict", "retryable", "concurrent", "was not found", "already exists"))


def _quote(value: object) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def where_clause(filters: dict[str, object] | None) -> str | None:
    """SQL filter for LanceDB from column → value (or list of values)."""
    if not filters:
        return None
    parts = []
    for col, val in filters.items():
        if col not in META_COLUMNS:
            raise ValueError(f"cannot filter on {col!r}; filterable columns: {', '.join(META_COLUMNS)}")
        if isinstance(val, list | tuple | set):
            parts.append(f"{col} IN ({', '.join(_quote(v) for v in val)})")
        else:
            parts.append(f"{col} = {_quote(val)}")
    return " AND ".join(parts)


class FeatureStore:
    """Embeddings in LanceDB; writers are serialized by a file lock and use ``merge_insert`` on the key."""

    def __init__(self, uri: Path | str | None = None, lock: bool | None = None) -> None:
        self.uri = Path(uri) if uri else paths.lancedb_path()
        self.uri.mkdir(parents=True, exist_ok=True)
        if lock is None:
            lock = os.environ.get("CELLREP_FS_LOCK", "1") not in ("0", "false", "no")
        self._lock = FileLock(str(self.uri) + ".lock") if lock else contextlib.nullcontext()
        self.db = lancedb.connect(str(self.uri))
        self._dims: dict[str, int] = {}
        self._keyed: set[str] = set()
        self.commit_retries = 0  # commits retried after a conflict, over this object's lifetime

    def _table(self, name: str):
        """Open a table; a table whose manifest or data files are torn raises ``CorruptFileError`` naming them."""
        try:
            return self.db.open_table(name)
        except (OSError, RuntimeError, ValueError) as err:
            raise (self._corrupt(name, err) or err) from err

    def table_names(self) -> list[str]:
        """Embedding tables present (one per vector dimension; ``cell_embeddings`` first). A table whose creation
        never committed (killed while its first version was written: data files, no manifest) is not there yet:
        readers see no table, and the next write creates it over the leftovers."""
        names = self.db.list_tables().tables if hasattr(self.db, "list_tables") else self.db.table_names()
        return sorted((n for n in names if n.startswith(TABLE) and self._committed(n)), key=lambda n: (n != TABLE, n))

    def _committed(self, name: str) -> bool:
        versions = self.uri / f"{name}.lance" / "_versions"
        return not versions.parent.exists() or any(versions.glob("*.manifest"))

    def table_for_dim(self, dim: int) -> str:
        """The table holding ``dim``-d vectors: ``cell_embeddings`` unless it holds another dimension."""
        names = self.table_names()
        if TABLE not in names or self.vector_dim(TABLE) == dim:
            return TABLE
        return f"{TABLE}_{dim}d"

    def vector_dim(self, table: str = TABLE) -> int:
        """Dimension of the fixed-size vectors of a table (a table's dimension never changes: cached)."""
        if table not in self._dims:
            self._dims[table] = self._table(table).schema.field("vector").type.list_size
        return self._dims[table]

    @staticmethod
    def _arrow(meta: pd.DataFrame, vectors: np.ndarray) -> pa.Table:
        if len(meta) != len(vectors):
            raise ValueError(f"{len(meta)} metadata rows but {len(vectors)} vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if meta.duplicated(KEY).any():
            dup = meta[meta.duplicated(KEY)].iloc[0]
            raise ValueError(f"duplicate key in embeddings batch: {dup['cell_id']} / {dup['model_version']}")
        cols = {c: pa.array(meta[c].astype(str).tolist(), pa.string()) for c in META_COLUMNS}
        cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
        return pa.table(cols, schema=table_schema(vectors.shape[1]))

    def upsert(self, meta: pd.DataFrame, vectors: np.ndarray) -> int:
        """Insert or replace rows keyed by (cell_id, model_version); re-running never duplicates."""
        if len(meta) != len(vectors):
            raise ValueError(f"{len(meta)} metadata rows but {len(vectors)} vectors")
        if len(meta) == 0:
            return 0
        return self._merge(self._arrow(meta, vectors))

    def replace(self, filters: dict[str, object], meta: pd.DataFrame, vectors: np.ndarray) -> int:
        """Replace the rows matching ``filters`` (e.g. one plate and model version) by ``meta``/``vectors``
        in one commit: ``merge_insert`` on the key that also deletes the matching rows absent from the
        batch, so a reader sees either the old rows or the new ones, never a half-written plate."""
        if len(meta) == 0:
            raise ValueError(f"no rows to replace {where_clause(filters)} with; use delete() to drop them")
        return self._merge(self._arrow(meta, vectors), delete_where=where_clause(filters))

    def _merge(self, data: pa.Table, delete_where: str | None = None) -> int:
        """Create the table of the vectors' dimension with ``data``, or merge ``data`` into it on the key
        (and delete the rows matching ``delete_where`` that ``data`` does not have); a commit that conflicts with
        another writer's is retried (at most ``MAX_COMMIT_RETRIES`` times, counted in ``commit_retries``)."""
        with self._lock:
            name = self.table_for_dim(data.schema.field("vector").type.list_size)
            for attempt in range(MAX_COMMIT_RETRIES + 1):
                faults.point("lance_commit")
                try:
                    if name not in self.table_names():
                        # Lance file format 2.1: random access to the metadata of the k hits is 3-4x cheaper
                        # than in the 2.0 default (1M rows: 9 ms vs 32 ms per query, benchmarks/bench_search.py)
                        self.db.create_table(name, data=data, data_storage_version=LANCE_FORMAT)
                    else:
                        self.ensure_primary_key(name)
                        merge = self._table(name).merge_insert(KEY).when_matched_update_all()
                        merge = merge.when_not_matched_insert_all()
                        if delete_where is not None:
                            merge = merge.when_not_matched_by_source_delete(delete_where)
                        merge.execute(data)
                    break
                except (OSError, RuntimeError, ValueError) as err:
                    from cellrep_core.errors import disk_full, is_disk_full

                    if is_disk_full(err):  # the commit was not made: the table is as it was
                        raise disk_full(err, self.uri / f"{name}.lance", f"{data.num_rows} embeddings") from err
                    if attempt == MAX_COMMIT_RETRIES or not _retryable(err):
                        corrupt = self._corrupt(name, err) if name in self.table_names() else None
                        if corrupt is not None:
                            raise corrupt from err
                        raise
                    self.commit_retries += 1
                    time.sleep(0.05 * (2 ** attempt) * (0.5 + np.random.random()))
        return data.num_rows

    def ensure_primary_key(self, table: str) -> bool:
        """Declare the key columns the table's unenforced primary key, rewriting a table created before that
        (one new version; earlier versions stay readable). True when it migrated the table."""
        if table in self._keyed:
            return False
        tbl = self._table(table)
        if has_primary_key(tbl.schema):
            self._keyed.add(table)
            return False
        data = tbl.to_arrow()
        data = data.cast(table_schema(data.schema.field("vector").type.list_size))
        self.db.create_table(table, data=data, mode="overwrite", data_storage_version=LANCE_FORMAT)
        self._keyed.add(table)
        return True

    def delete(self, filters: dict[str, object], table: str = TABLE) -> None:
        """Delete rows matching the filters (used to replace one plate's rows)."""
        if table not in self.table_names():
            return
        with self._lock:
            self._table(table).delete(where_clause(filters))

    def versions(self, table: str = TABLE) -> pd.DataFrame:
        """The kept versions of a table: version number, timestamp (UTC) and row count."""
        if table not in self.table_names():
            return pd.DataFrame(columns=["version", "timestamp", "rows"])
        vs = self._table(table).list_versions()
        return pd.DataFrame(
            {
                "version": [int(v["version"]) for v in vs],
                "timestamp": [v["timestamp"] for v in vs],
                "rows": [int(v["metadata"].get("total_rows", -1)) for v in vs],
            }
        )

    def version_as_of(self, when: datetime, table: str = TABLE) -> int:
        """The table version that was current at ``when`` (naive datetimes are UTC)."""
        vs = self.versions(table)
        when = when.replace(tzinfo=None) if when.tzinfo is None else when.astimezone(UTC).replace(tzinfo=None)
        before = vs[vs.timestamp <= pd.Timestamp(when)]
        if before.empty:
            first = vs.timestamp.min() if len(vs) else "never"
            raise LookupError(f"{table} did not exist at {when:%Y-%m-%d %H:%M:%S} (first version: {first})")
        return int(before.version.max())

    def open_table(self, table: str = TABLE, version: int | None = None, as_of: datetime | None = None):
        """A table, at its latest version or read back at ``version`` / the version current at ``as_of``."""
        tbl = self._table(table)
        if as_of is not None:
            version = self.version_as_of(as_of, table)
        if version is not None:
            tbl.checkout(int(version))
        return tbl

    def current_versions(self) -> dict[str, int]:
        """The current version of every embedding table (what a reader opening them now sees)."""
        return {name: int(self._table(name).version) for name in self.table_names()}

    def tag_versions(self, tag: str, versions: dict[str, int] | None = None) -> dict[str, int]:
        """Tag each table's version (default: the current one) as ``tag``, moving an earlier tag of that name:
        a q-value table records the embedding versions it read, and maintenance keeps tagged versions."""
        versions = versions or self.current_versions()
        with self._lock:
            for name, version in versions.items():
                tags = self._table(name).tags
                if tag in tags.list():
                    tags.update(tag, int(version))
                else:
                    tags.create(tag, int(version))
        return versions

    def tagged_versions(self, table: str = TABLE) -> dict[str, int]:
        """Tag -> version of a table."""
        if table not in self.table_names():
            return {}
        return {k: int(v["version"]) for k, v in self._table(table).tags.list().items()}

    def optimize(self, keep: timedelta = timedelta(days=7)) -> list[dict]:
        """Compact every table's files, fold new rows into its indices and drop versions older than ``keep``
        (the latest version is always kept) but never a tagged one: the cleanup window is widened to the
        oldest tagged version (Lance refuses to clean up tagged versions, and a q-value table's tag must stay
        readable). Returns per-table row and version counts."""
        out = []
        with self._lock:
            for name in self.table_names():
                tbl = self._table(name)
                before = len(tbl.list_versions())
                window = keep
                tagged = set(self.tagged_versions(name).values())
                if tagged:
                    stamps = {int(v["version"]): v["timestamp"] for v in tbl.list_versions()}
                    oldest = min(stamps[v] for v in tagged if v in stamps)
                    now = datetime.now(oldest.tzinfo) if oldest.tzinfo else datetime.now(UTC).replace(tzinfo=None)
                    window = max(keep, now - oldest + timedelta(minutes=1))
                tbl.optimize(cleanup_older_than=window)
                out.append(
                    {"table": name, "rows": tbl.count_rows(), "versions_before": before,
                     "versions_after": len(tbl.list_versions()), "tagged": len(tagged)}
                )
        return out

    def load(
        self,
        filters: dict[str, object] | None = None,
        table: str = TABLE,
        version: int | None = None,
        as_of: datetime | None = None,
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Metadata and ``[n, d]`` vectors of the rows matching the filters, ordered by cell_id; optionally
        as the table was at ``version`` or at the date ``as_of`` (time travel)."""
        if table not in self.table_names():
            return pd.DataFrame(columns=META_COLUMNS), np.zeros((0, 0), np.float32)
        tbl = self.open_table(table, version, as_of)
        w = where_clause(filters)
        try:
            arrow = tbl.search().where(w).limit(None).to_arrow() if w else tbl.to_arrow()
        except (OSError, RuntimeError, ValueError) as err:
            raise (self._corrupt(table, err) or err) from err
        df = arrow.to_pandas()
        df = df.sort_values(KEY).reset_index(drop=True)
        vecs = np.stack(df.pop("vector").to_numpy()).astype(np.float32) if len(df) else np.zeros((0, 0))
        return df, vecs

    def unreadable_files(self, table: str = TABLE) -> list[str]:
        """Files of a table that are torn: its data files and version manifests. A Lance file ends with the
        magic ``LANC``; a file cut short by a crash or a full disk does not (damage inside a file shows only when
        it is read: ``readable``)."""
        root = self.uri / f"{table}.lance"
        out = []
        for f in sorted([*(root / "data").glob("*.lance"), *(root / "_versions").glob("*.manifest")]):
            try:
                with open(f, "rb") as fh:
                    fh.seek(-4, os.SEEK_END)
                    ok = fh.read(4) == b"LANC"
            except OSError:
                ok = False
            if not ok:
                out.append(str(f))
        return out

    def readable(self, table: str = TABLE, version: int | None = None) -> bool:
        """Whether a table's version (default: the latest) reads whole, through a fresh connection (an open one
        keeps file metadata it read before the damage)."""
        try:
            tbl = lancedb.connect(str(self.uri)).open_table(table)
            if version is not None:
                tbl.checkout(int(version))
            tbl.to_arrow()
        except (OSError, RuntimeError, ValueError):
            return False
        return True

    def _corrupt(self, table: str, err: BaseException) -> CorruptFileError | None:
        """A ``CorruptFileError`` naming ``table`` (and its torn files) when ``err`` came from a damaged table."""
        torn = self.unreadable_files(table)
        if not torn and self.readable(table):
            return None
        what = f"torn file(s) {', '.join(torn)}" if torn else "its current version does not read"
        return CorruptFileError(f"LanceDB table {table}: {what} ({err}); `cellrep store repair --table {table}` "
                                "rolls the table back to its newest version that reads whole, then materialize the "
                                "embeddings again (they are written back whole)")

    def repair(self, table: str = TABLE) -> dict:
        """Bring a table that does not read back to its newest version that does: a torn version manifest is
        moved aside (to ``<table>.lance/_torn/``; the version it described is lost), and a version whose data
        files are torn is rolled back from (a new version with the rows of the newest whole one). The embeddings
        written since are written again by materializing them. A table that reads whole is left as it is."""
        with self._lock:
            root = self.uri / f"{table}.lance"
            torn = self.unreadable_files(table)
            moved = [Path(f) for f in torn if f.endswith(".manifest")]
            if moved:
                aside = root / "_torn"
                aside.mkdir(exist_ok=True)
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
                for f in moved:
                    f.replace(aside / f"{f.name}.{stamp}")
                (root / "_versions" / "latest_version_hint.json").unlink(missing_ok=True)
            db = lancedb.connect(str(self.uri))  # a fresh connection: the open one cached the torn state
            self.db, self._keyed = db, set()
            versions = sorted((int(v["version"]) for v in db.open_table(table).list_versions()), reverse=True)
            if self.readable(table):
                if not moved:
                    return {"table": table, "repaired": False, "version": versions[0]}
                tbl = db.open_table(table)
                return {"table": table, "repaired": True, "restored_version": versions[0], "torn_files": torn,
                        "rows": tbl.count_rows(), "version": int(tbl.version)}
            for v in versions[1:]:
                if self.readable(table, v):
                    tbl = db.open_table(table)
                    tbl.restore(v)
                    return {"table": table, "repaired": True, "restored_version": v, "torn_files": torn,
                            "rows": tbl.count_rows(), "version": int(tbl.version)}
        raise CorruptFileError(f"LanceDB table {table}: no version reads whole (torn: {torn}); delete "
                               f"{root} and materialize the embeddings again")

    def count(self, table: str = TABLE) -> int:
        """Number of rows in a table (0 when absent)."""
        return self._table(table).count_rows() if table in self.table_names() else 0

    def vector_index(self, table: str = TABLE) -> dict | None:
        """The vector index of a table: name, type, indexed and unindexed row counts (None if none)."""
        tbl = self._table(table)
        for idx in tbl.list_indices():
            if "vector" in list(idx.columns):
                st = tbl.index_stats(idx.name)
                return {
                    "name": idx.name,
                    "type": str(idx.index_type),
                    "indexed_rows": int(st.num_indexed_rows),
                    "unindexed_rows": int(st.num_unindexed_rows),
                }
        return None

    def ensure_index(self, table: str = TABLE, min_rows: int = ANN_MIN_ROWS, force: bool = False) -> str | None:
        """Build (or rebuild) the ANN index of a table once it has ``min_rows`` rows, or when more than
        ``ANN_REINDEX_FRACTION`` of its rows are not indexed; returns what was built (None: nothing)."""
        if table not in self.table_names():
            return None
        n = self.count(table)
        if n < min_rows and not force:
            return None
        current = self.vector_index(table)
        if current and not force and current["unindexed_rows"] <= ANN_REINDEX_FRACTION * n:
            return None
        partitions = max(1, int(round(np.sqrt(n))))
        with self._lock:
            self._table(table).create_index(
                "vector",
                config=IvfHnswSq(distance_type="cosine", num_partitions=partitions),
                replace=True,
            )
        return f"{ANN_INDEX_TYPE}({partitions})"

    def nearest(
        self,
        vector: np.ndarray,
        k: int = 10,
        filters: dict[str, object] | None = None,
        metric: str = "cosine",
        table: str | None = None,
    ) -> pd.DataFrame:
        """The k nearest stored cells to a vector, with distance and metadata."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        table = table or self.table_for_dim(len(vector))
        if table not in self.table_names():
            raise LookupError(f"no embeddings of dimension {len(vector)} in {self.uri}")
        tbl = self._table(table)
        q = tbl.search(vector).distance_type(metric).limit(k).select([*META_COLUMNS, "_distance"])
        if any("vector" in list(i.columns) for i in tbl.list_indices()):
            q = q.nprobes(ANN_NPROBES).refine_factor(ANN_REFINE)
        w = where_clause(filters)
        if w:
            q = q.where(w, prefilter=True)
        # metadata only: fetching the 10 result vectors costs more than the search itself
        return q.to_arrow().to_pandas().rename(columns={"_distance": "distance"})
