"""`query()` reads by default: SQL that writes, attaches, loads or reads elsewhere is refused."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tesaiot_data import QueryError, load_recording, query
from tesaiot_data.files.parquet import write_frame
from tests.frames import make_frame

pytest.importorskip("duckdb", reason="DuckDB, the sql extra, is not installed")


def digest(root: Path) -> dict[str, str]:
    """Every file under `root` (or `root` itself) by its bytes."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(file): hashlib.sha256(file.read_bytes()).hexdigest() for file in files}


@pytest.fixture(params=["file", "dataset"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "file":
        return write_frame(make_frame(5), tmp_path / "victim.parquet")
    folder = tmp_path / "data"
    write_frame(make_frame(5), folder / "date=2025-12-09" / "part-1.parquet")
    write_frame(make_frame(3, prefix="b"), folder / "date=2025-12-09" / "part-2.parquet")
    return folder


def a_file_of(source: Path) -> Path:
    return source if source.is_file() else sorted(source.rglob("*.parquet"))[0]


def refused_statements(source: Path, tmp_path: Path) -> list[str]:
    victim = a_file_of(source)
    other = write_frame(make_frame(2, prefix="other"), tmp_path / "other" / "o.parquet")
    secret = tmp_path / "secret.txt"
    secret.write_text("the token\n")
    return [
        f"COPY (select 1 as a) TO '{victim}'",
        f"COPY (select 1 as a) TO '{victim}' (FORMAT parquet, USE_TMP_FILE false)",
        f"COPY telemetry TO '{tmp_path / 'out.csv'}'",
        f"select 1; COPY (select 1 as a) TO '{victim}'",  # nothing runs, the select neither
        f"EXPORT DATABASE '{tmp_path / 'export'}'",
        f"ATTACH '{tmp_path / 'x.duckdb'}' AS x",
        f"ATTACH '{victim}' AS v",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "RESET enable_external_access",
        "SET lock_configuration = false",
        "SET memory_limit = '1TB'",
        f"select * from read_csv('{secret}')",
        f"select * from read_text('{secret}')",
        f"select * from read_blob('{secret}')",
        f"select * from sniff_csv('{secret}')",
        "select * from read_csv('/etc/passwd', sep = ':')",
        f"select * from glob('{tmp_path}/*')",
        f"select count(*) from read_parquet('{other}')",
        f"IMPORT DATABASE '{tmp_path / 'export'}'",
        f"CALL enable_logging(storage = 'file', storage_path = '{tmp_path / 'logs'}')",
        "PRAGMA enable_profiling = 'json'",
    ]


def test_statements_that_write_or_reach_outside_are_refused(source: Path, tmp_path: Path) -> None:
    statements = refused_statements(source, tmp_path)
    before = digest(tmp_path)
    rows = load_recording(source)
    for sql in statements:
        with pytest.raises(QueryError) as refused:
            query(source, sql)
        assert "allow_writes=True" in str(refused.value.hint), sql
        assert refused.value.kind in {"PermissionException", "InvalidInputException"}, sql
        assert digest(tmp_path) == before, sql  # byte for byte, and no new file
    pd.testing.assert_frame_equal(load_recording(source), rows)


def test_reading_the_recording_still_works_when_locked(source: Path) -> None:
    counted = query(source, "select count(*) as n from telemetry")["n"].tolist()
    assert counted == [len(load_recording(source))]
    # Its own files by path, a view, a macro and a temporary table are reads.
    own = a_file_of(source)
    sql = (
        "create macro twice(x) as 2 * x; create temp table t as select * from telemetry; "
        f"select count(*) as n, max(twice(1)) as two from read_parquet('{own}')"
    )
    assert query(source, sql)[["n", "two"]].values.tolist() == [[len(load_recording(own)), 2]]
    assert query(source, "describe telemetry")["column_name"].tolist()[0] == "timestamp"
    # The spill folder stays writable: a sort beyond the memory limit still completes.
    big = "select count(*) as n from (select random() as v from range(6000000) order by v)"
    assert query(source, big, memory_limit="32MB", threads=1)["n"].tolist() == [6_000_000]


def test_allow_writes_runs_them(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    query(source, f"COPY telemetry TO '{out}' (HEADER)", allow_writes=True)
    assert len(out.read_text().splitlines()) == 1 + len(load_recording(source))
    secret = tmp_path / "secret.txt"
    secret.write_text("a,b\n1,2\n")
    assert query(source, f"select * from read_csv('{secret}')", allow_writes=True).shape == (1, 2)
    assert query(source, "SET threads = 1; select 1 as one", allow_writes=True)["one"][0] == 1


def test_the_cli_refuses_in_one_line_and_allows_with_the_flag(tmp_path: Path) -> None:
    victim = write_frame(make_frame(5), tmp_path / "victim.parquet")
    before = digest(victim)
    command = [sys.executable, "-m", "tesaiot_data.cli", "query", str(victim)]
    copy = f"COPY (select 1 as a) TO '{victim}'"
    refused = subprocess.run([*command, copy], capture_output=True, text=True)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: the query over")
    assert "--allow-writes" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert digest(victim) == before
    out = tmp_path / "copy.parquet"
    copied = f"COPY telemetry TO '{out}'"
    allowed = subprocess.run([*command, copied, "--allow-writes"], capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert len(load_recording(out)) == 5
    assert digest(victim) == before
