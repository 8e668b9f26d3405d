"""`cellrep sql` reads the warehouse and the embedding tables, and nothing else: no files, no extensions."""

import pytest

from cellrep_core.cli import main as core_main
from cellrep_core.cli import run_sql


@pytest.mark.parametrize("sql", [
    "COPY (select 1) TO '{tmp}/out.csv'",
    "select * from read_csv('/etc/passwd')",
    "select * from glob('/etc/*')",
    "ATTACH '{tmp}/other.duckdb'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
])
def test_sql_cannot_touch_files_extensions_or_settings(home, tmp_path, sql):
    with pytest.raises(PermissionError, match="cellrep sql"):
        run_sql(sql.format(tmp=tmp_path))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_sql_still_reads_and_the_cli_says_why_it_refused(home, tmp_path, capsys):
    assert run_sql("select count(*) n from cells").n[0] == 0
    assert core_main(["sql", f"COPY (select 1) TO '{tmp_path}/x.csv'"]) == 2
    assert "files (COPY ... TO" in capsys.readouterr().err
    # exporting goes through --out, which cellrep writes itself
    assert core_main(["sql", "select 1 as a", "--format", "csv", "--out", str(tmp_path / "a.csv")]) == 0
    assert (tmp_path / "a.csv").read_text().splitlines() == ["a", "1"]


def test_a_sql_mistake_is_a_message_not_a_traceback(home, capsys):
    assert core_main(["sql", "select * from no_such_table"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cellrep: Catalog Error") and "Traceback" not in err


def _hold_a_write(home: str, started: str, seconds: float) -> None:
    import os
    import time
    from pathlib import Path

    os.environ["CELLREP_HOME"] = home
    from cellrep_core.store.warehouse import Warehouse

    with Warehouse().write() as con:
        con.execute("INSERT INTO plates (plate_id, n_cells) VALUES ('p_writing', 3)")
        Path(started).touch()
        time.sleep(seconds)


def test_sql_waits_for_a_commit_in_another_process_instead_of_failing(home, tmp_path):
    """A writer's open transaction holds DuckDB's file lock; `cellrep sql` takes the warehouse's shared lock, so
    it waits for the commit (and then sees the whole write) instead of failing with "Could not set lock"."""
    import multiprocessing as mp
    import time

    run_sql("select 1")  # the warehouse exists
    started = tmp_path / "started"
    proc = mp.get_context("spawn").Process(target=_hold_a_write, args=(str(home), str(started), 2.0))
    proc.start()
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert started.exists()
    t0 = time.time()
    df = run_sql("select plate_id, n_cells from plates")
    waited = time.time() - t0
    proc.join(30)
    assert proc.exitcode == 0
    assert list(df.plate_id) == ["p_writing"] and waited > 1.0  # waited for the commit, then read all of it
