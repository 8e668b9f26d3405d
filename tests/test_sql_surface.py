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
