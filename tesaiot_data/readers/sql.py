"""SQL over recordings larger than memory, with DuckDB (the optional `sql` extra).

`query()` shows a recording, an unfinished recording's parts, a folder of recordings or a
hive dataset to DuckDB as a view named `telemetry` and runs SQL on it. The view is the
pyarrow dataset `load_recording` reads (`readers.disk.recording_dataset`): the same files,
listed one by one (a path holding `[`, `?` or `*` is never a glob), each cast to the
canonical schema whatever it stores, so both readers return the same rows and values.
DuckDB scans it a batch at a time, pushes its column choice and filters down to pyarrow
(row groups are skipped by their statistics) and spills sorts, joins and grouped aggregates
to a temporary folder (under `TMPDIR`) beyond its memory limit, so they work over more rows
than fit in memory; only the result becomes a pandas DataFrame. An exact median or another
aggregate that holds every value of its group does not spill.

The module is named `sql`, not `query`: a submodule named like the function it exports
would replace `tesaiot_data.query` (the function) by the module once anything imported it.
DuckDB itself is imported on the first call, never at import time.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pyarrow as pa

from tesaiot_data.errors import ConfigError, MissingExtraError, QueryError
from tesaiot_data.files.layout import read_consistent
from tesaiot_data.files.store import Location, StorePath, location
from tesaiot_data.readers.disk import recording_dataset
from tesaiot_data.schema import CATEGORY_COLUMNS, COLUMNS

__all__ = ["VIEW", "query"]

logger = logging.getLogger(__name__)

#: The name of the view that holds the recording's rows in every query.
VIEW = "telemetry"

_INSTALL_HINT = "pip install 'tesaiot-data[sql]' (or pip install 'duckdb>=1.1')"
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*$", re.IGNORECASE)
_UTC_NS = pd.DatetimeTZDtype(unit="ns", tz="UTC")
# Statement types (duckdb.StatementType names) that write files, reach other databases or
# extensions, or change the session; IMPORT DATABASE parses as a PRAGMA and is stopped by
# the locked external access instead.
_WRITING = {
    "COPY": "COPY writes or reads files",
    "COPY_DATABASE": "COPY DATABASE copies a database",
    "EXPORT": "EXPORT writes files",
    "ATTACH": "ATTACH opens a database",
    "DETACH": "DETACH closes a database",
    "LOAD": "INSTALL and LOAD fetch and run extensions",
    "SET": "SET, RESET and USE change the session",
    "VARIABLE_SET": "SET VARIABLE changes the session",
}
_WRITES_HINT = (
    "query() only reads the recording by default; pass allow_writes=True "
    "(tesaiot-data query --allow-writes) to run SQL that writes files, attaches databases, "
    "loads extensions, changes settings or reads other files"
)


def query(
    source: str | Path | StorePath,
    sql: str,
    *,
    memory_limit: str | int | None = None,
    threads: int | None = None,
    allow_writes: bool = False,
) -> pd.DataFrame:
    """Run SQL over a recording with DuckDB, without loading the recording into memory.

    The rows are the view `telemetry`, with the columns and types `load_recording` returns:
    `timestamp` and `received_at` (TIMESTAMPTZ_NS with DuckDB 2; DuckDB 1.x reads them as
    TIMESTAMPTZ, truncated to microseconds), `device_id`, `sensor_type`, `metric`, `unit`,
    `value_text` (VARCHAR) and `value` (DOUBLE), whatever types the files store (an int64
    `value` of a pandas backfill is read as DOUBLE); a dataset's partition column `date` is
    not one of them. The session's time zone is UTC, so `date_trunc('hour', timestamp)`
    buckets by UTC hours. Each call opens a fresh in-memory DuckDB that spills to a
    temporary folder, removed afterwards.

    The SQL only reads by default: statements that write files (`COPY ... TO`, `EXPORT`),
    attach or detach databases, install or load extensions, or change settings (`SET`,
    `RESET`, `USE`) are refused before anything runs, and DuckDB itself is then locked
    (`enable_external_access=false` with only the recording's own files readable,
    `lock_configuration=true`), so no table function reads another file either.
    `allow_writes=True` lifts both, and the SQL runs with every right of the user.

    Example:
        >>> query("session.parquet", '''
        ...     select device_id, metric, date_trunc('hour', timestamp) as hour,
        ...            avg(value) as mean, min(value) as low, max(value) as high,
        ...            count(*) as rows
        ...     from telemetry group by all order by all''')  # doctest: +SKIP

    Args:
        source: A recording's Parquet file, an unfinished recording's `<file>.parts` folder
            (or the `<file>` when only its parts folder exists), a folder of recordings, or
            a dataset folder of hive partitions `date=YYYY-MM-DD/`; the same files
            `load_recording` reads, whoever wrote them.
        sql: One or more SQL statements; the result of the last is returned.
        memory_limit: DuckDB's memory limit, such as `"1GB"` or `"512MiB"`, or an int of
            bytes. Beyond it, sorts, joins and aggregates spill to disk; a query that cannot
            spill fails with a `QueryError`. Default: DuckDB's, 80 % of the machine's RAM.
        threads: Threads DuckDB may use; default one per core.
        allow_writes: Run statements that write files, attach databases, install or load
            extensions, change settings or read files other than the recording's.

    Returns:
        The result of the last statement, with a fresh RangeIndex (no columns for a
        statement without a result). Every timestamp column is `datetime64[ns, UTC]` (a
        naive DuckDB TIMESTAMP is taken as UTC, the session's zone; microseconds kept where
        nanoseconds would overflow); a string column named like a canonical string column
        (`device_id`, `sensor_type`, `metric`, `unit`, `value_text`) is `category`; other
        columns keep the dtypes pyarrow gives them.

    Raises:
        MissingExtraError: DuckDB is not installed (`pip install tesaiot-data[sql]`).
        FileNotFoundError: Nothing is at `source`, or a compaction changed the dataset under
            every attempt to read it.
        NotARecordingError: `source`, or a file in its folder, is not a recording: a rejects
            sidecar, not Parquet, or Parquet without the telemetry columns or with columns of
            other kinds (text in `value`), the file named; or `source`'s name is not UTF-8
            (a file in its folder so named is skipped with a warning).
        ConfigError: `memory_limit` or `threads` is not a valid value.
        QueryError: DuckDB could not run the SQL (bad syntax, an unknown column or function,
            out of memory); the message holds DuckDB's and `kind` its error class. Also a
            statement or a file access refused because `allow_writes` is false; then `kind`
            is `PermissionException`.
    """
    duckdb = _import_duckdb()
    config = _config(memory_limit=memory_limit, threads=threads)
    path = location(source)

    def run(files: list[Location]) -> pa.Table:
        started = time.perf_counter()
        # The dataset load_recording reads: the files listed (never a glob DuckDB would
        # expand: `[`, `?` and `*` are legal in names), each cast to the canonical schema.
        rows = recording_dataset(files)
        with tempfile.TemporaryDirectory(prefix="tesaiot-sql-") as spill:
            try:
                connection = duckdb.connect(":memory:", config={**config, "temp_directory": spill})
                try:
                    _use_utc(connection, duckdb)
                    # A progress bar on stdout would garble a notebook cell or the CLI's table.
                    connection.execute("SET enable_progress_bar = false")
                    connection.register(VIEW, rows)
                    if not allow_writes:
                        _refuse_writes(connection, sql, source=path)
                        _lock(connection, files)
                    table = _run(connection, sql)
                finally:
                    connection.close()
            except duckdb.Error as exc:
                gone = [file for file in files if not file.exists()]
                if gone:  # a compaction replaced it meanwhile: read_consistent reads again
                    raise FileNotFoundError(f"{gone[0]} vanished while it was read") from exc
                raise _query_error(exc, duckdb, source=path, locked=not allow_writes) from exc
        logger.debug(
            "query over %d files of %s: %d rows in %.3f s",
            len(files),
            path,
            table.num_rows,
            time.perf_counter() - started,
        )
        return table

    # The files load_recording reads; for a dataset, one whole state of it, read again if a
    # compaction replaced its parts meanwhile.
    return _to_frame(read_consistent(path, run))


def _import_duckdb() -> ModuleType:
    try:
        import duckdb  # noqa: PLC0415  (an optional extra; never imported with the package)
    except ImportError as exc:
        raise MissingExtraError(
            "SQL queries need DuckDB, which is not installed", hint=_INSTALL_HINT, extra="sql"
        ) from exc
    return duckdb


def _config(*, memory_limit: str | int | None, threads: int | None) -> dict[str, Any]:
    # Checked here: DuckDB takes "2" as a parser error and "123B" as a limit nothing fits in.
    config: dict[str, Any] = {}
    if memory_limit is not None:
        if isinstance(memory_limit, bool) or not isinstance(memory_limit, (str, int)):
            raise ConfigError(
                f"memory_limit={memory_limit!r} is not a size", hint='use e.g. "1GB" or "512MiB"'
            )
        if isinstance(memory_limit, int):
            if memory_limit <= 0:
                raise ConfigError(
                    f"memory_limit={memory_limit!r} must be a positive number of bytes",
                    hint='or a size such as "1GB"',
                )
            memory_limit = f"{memory_limit}B"
        elif not _MEMORY.match(memory_limit):
            raise ConfigError(
                f"memory_limit={memory_limit!r} is not a size DuckDB understands",
                hint='a number and a unit: "1GB", "512MB" (1000^i) or "512MiB" (1024^i)',
            )
        config["memory_limit"] = memory_limit.strip()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads={threads!r} must be an int of at least 1")
        config["threads"] = threads
    return config


def _quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _use_utc(connection: Any, duckdb: ModuleType) -> None:
    # Time zone functions (date_trunc on TIMESTAMPTZ) come from the ICU extension, bundled in
    # the wheels; without it DuckDB does TIMESTAMPTZ arithmetic in UTC anyway. The setting is
    # made after connecting: given to connect() it comes before ICU is loaded and fails.
    try:
        connection.execute("SET TimeZone = 'UTC'")
    except duckdb.Error:
        logger.debug("DuckDB has no ICU extension; time zone functions work in UTC")


def _refuse_writes(connection: Any, sql: str, *, source: Location) -> None:
    for statement in connection.extract_statements(sql):
        kind = getattr(statement.type, "name", str(statement.type))
        if kind in _WRITING:
            text = " ".join(statement.query.split())
            raise QueryError(
                f"the query over {source} was refused: {_WRITING[kind]} ({text[:80]!r})",
                hint=_WRITES_HINT,
                kind="PermissionException",
            )


def _lock(connection: Any, files: Sequence[Location]) -> None:
    # After the view exists: from here on DuckDB opens no file but the recording's own (the
    # view reads them through pyarrow; the SQL may read_parquet them by path) and its spill
    # folder, and no setting, this one included, can be changed back.
    paths = ", ".join(_quote_text(str(file.absolute())) for file in files)
    connection.execute(f"SET allowed_paths = [{paths}]")  # DuckDB 1.2 and later
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")


def _run(connection: Any, sql: str) -> pa.Table:
    relation = connection.sql(sql)
    if relation is None:  # a statement without a result (SET, CREATE ...)
        return pa.table({})
    # to_arrow_table since DuckDB 1.4; fetch_arrow_table before (deprecated in 2.0).
    fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return fetch()


def _query_error(
    exc: Exception, duckdb: ModuleType, *, source: Location, locked: bool
) -> QueryError:
    message = " ".join(str(exc).split())
    if locked and (
        isinstance(exc, getattr(duckdb, "PermissionException", ()))
        or "configuration has been locked" in message
    ):
        hint = _WRITES_HINT
    elif isinstance(exc, getattr(duckdb, "OutOfMemoryException", ())):
        hint = (
            "raise memory_limit (--memory-limit) or use fewer threads; exact medians, "
            "quantiles and list aggregates hold every value of a group in memory, "
            "approx_quantile does not"
        )
    else:
        hint = (
            f"the rows are the view {VIEW} with the columns {', '.join(COLUMNS)}; "
            "see https://duckdb.org/docs/sql/introduction"
        )
    return QueryError(
        f"the query over {source} failed: {message}", hint=hint, kind=type(exc).__name__
    )


def _to_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    for position, name in enumerate(frame.columns):
        column = frame.iloc[:, position]
        dtype = column.dtype
        if pd.api.types.is_datetime64_any_dtype(dtype):
            frame.isetitem(position, _utc(column))
        elif name in CATEGORY_COLUMNS and (
            pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype)
        ):
            frame.isetitem(position, column.astype("category"))
    return frame.reset_index(drop=True)


def _utc(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert("UTC")
    else:
        column = column.dt.tz_localize("UTC")
    try:
        return column.astype(_UTC_NS)
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        return column
