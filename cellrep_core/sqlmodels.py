"""``dbt_like_sql/``: one ``select`` per ``.sql`` file, materialized as a DuckDB table of the file's name."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from cellrep_core.store.warehouse import Warehouse

SQL_DIR = Path(__file__).resolve().parent.parent / "dbt_like_sql"

_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r"'(?:[^']|'')*'")
_CTE = re.compile(r"(?:\bwith\s+(?:recursive\s+)?|,\s*)([A-Za-z_][\w]*)\s+as\s*(?:not\s+)?(?:materialized\s+)?\(", re.I)
_TABLE = re.compile(r"\b(?:from|join)\s+([A-Za-z_][\w.]*)", re.I)


class SqlModelError(RuntimeError):
    """A SQL model failed; the message names the file and the line."""


@dataclass(frozen=True)
class SqlModel:
    """One SQL model: name, file, text, referenced tables and a code version (hash of the file)."""

    name: str
    path: Path
    sql: str
    deps: tuple[str, ...]
    code_version: str


def parse_deps(sql: str) -> list[str]:
    """Tables referenced after FROM/JOIN, without CTE names, table functions or comments."""
    text = _STRING.sub("''", _COMMENT.sub(" ", sql))
    ctes = {m.group(1).lower() for m in _CTE.finditer(text)}
    deps = []
    for m in _TABLE.finditer(text):
        name = m.group(1).split(".")[-1]
        after = text[m.end() : m.end() + 2].lstrip()
        if name.lower() in ctes or after.startswith("("):
            continue
        if name.lower() not in (d.lower() for d in deps):
            deps.append(name)
    return deps


def load_models(sql_dir: Path = SQL_DIR) -> list[SqlModel]:
    """All models of a folder, sorted by name."""
    out = []
    for f in sorted(Path(sql_dir).glob("*.sql")):
        sql = f.read_text()
        out.append(SqlModel(f.stem, f, sql, tuple(parse_deps(sql)), hashlib.sha256(sql.encode()).hexdigest()[:12]))
    return out


def topo_order(models: list[SqlModel]) -> list[SqlModel]:
    """Models ordered so that each comes after the models it reads."""
    by_name = {m.name: m for m in models}
    done: list[SqlModel] = []
    state: dict[str, int] = {}

    def visit(m: SqlModel, stack: tuple[str, ...]) -> None:
        if state.get(m.name) == 2:
            return
        if state.get(m.name) == 1:
            raise SqlModelError(f"cycle between SQL models: {' -> '.join((*stack, m.name))}")
        state[m.name] = 1
        for d in m.deps:
            if d in by_name:
                visit(by_name[d], (*stack, m.name))
        state[m.name] = 2
        done.append(m)

    for m in models:
        visit(m, ())
    return done


def _line_of(err: Exception, model: SqlModel) -> str:
    m = re.search(r"LINE (\d+)", str(err))
    # the statement starts with one line of CREATE ... AS before the file's first line
    return f"{model.path}:{int(m.group(1)) - 1}" if m else str(model.path)


EMBEDDING_TABLE = "cell_embeddings"


def materialize(wh: Warehouse, model: SqlModel, feature_store=None) -> int:
    """Create or replace the model's table; errors name the file and line. Returns the row count.

    A model that reads ``cell_embeddings`` (or ``cell_embeddings_<d>d``) sees the LanceDB tables of
    ``feature_store`` (vectors as ``FLOAT[d]``) registered in its connection."""
    body = model.sql.rstrip().rstrip(";")
    lance = [d for d in model.deps if d.startswith(EMBEDDING_TABLE)]
    try:
        with wh.write() as con:
            if lance:
                if feature_store is None:
                    raise SqlModelError(f"SQL model {model.name} ({model.path}) reads {lance} but got no feature store")
                present = set(feature_store.table_names())
                for name in lance:
                    if name not in present:
                        raise SqlModelError(
                            f"SQL model {model.name} ({model.path}) reads {name!r}, which the feature store does "
                            f"not have yet (present: {sorted(present) or 'none'}); materialize embeddings first"
                        )
                    con.register(name, feature_store.open_table(name).to_arrow())
            con.execute(f'CREATE OR REPLACE TABLE "{model.name}" AS\n{body}')
            return con.execute(f'SELECT count(*) FROM "{model.name}"').fetchone()[0]
    except duckdb.Error as err:
        raise SqlModelError(f"SQL model {model.name} ({_line_of(err, model)}): {err}") from err
