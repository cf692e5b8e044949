"""Every name on disk, and the listing of a recording's files that stays whole under compaction.

A recording is one Parquet file `<name>.parquet`, with `<stem>.rejects.parquet` and
`<stem>.alerts.parquet` beside it; while it records (or after a crash), its rows are in
`<name>.parquet.parts/part-NNNNNN.parquet` and `rejects-NNNNNN.parquet`. A dataset is a
folder of hive partitions `date=YYYY-MM-DD/` holding
`part-<UTC stamp>-<host>-<pid>-<8 hex>.parquet` files and, once compacted,
`compacted-<UTC stamp>-<8 hex>.parquet`. Temporary files are hidden (`.<name>.<hex>.tmp`)
and match none of these names, so the leftovers of a crash are never read.

A folder is read whoever wrote its files: every visible Parquet file in it and its
subfolders holds rows (a DuckDB or Spark partition's `data_0.parquet`, a backfill copied
into a `date=` folder, the finished recordings of a `recordings/` folder), except a
recording's sidecars, a `.parts` folder whose recording has finished, and, in a dataset of
`date=` partitions, files outside them; each file or folder left out is named in a warning.

A file whose name is not UTF-8 (a byte such as 0xff, which Python shows as a surrogate)
cannot be opened by pyarrow or DuckDB, whose paths are UTF-8: the listing skips it with a
warning that names it escaped, and reads the rest; a recording or dataset path that is not
UTF-8 itself is a `NotARecordingError`.

A compacted file (`tesaiot_data.files.compaction`) lists in its metadata the files it
replaces; the listing skips them. Between a compacted file's rename into place and the
deletion of the files it replaces, a reader thus sees the compacted file only, before it the
parts only; `read_consistent` reads again when a compaction changed the files under it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, timezone
from pathlib import Path, PurePath
from typing import TypeVar, cast

import pyarrow as pa
import pyarrow.parquet as pq

from tesaiot_data.errors import NotARecordingError
from tesaiot_data.files.metadata import PREFIX, REPLACES_KEY
from tesaiot_data.files.store import (
    Location,
    StorePath,
    check_bucket,
    filesystem_path,
    scan,
    translated,
    walk,
)
from tesaiot_data.schema import COLUMNS

__all__ = [
    "ALERTS_SUFFIX",
    "COMPACTED_PREFIX",
    "PART_GLOB",
    "REJECTS_PART_GLOB",
    "REJECTS_SUFFIX",
    "alerts_sidecar",
    "check_utf8_path",
    "compacted_name",
    "compacted_replaces",
    "dataset_part_name",
    "escaped",
    "is_parts_dir",
    "not_parquet_error",
    "not_telemetry_error",
    "partition_day",
    "partition_files",
    "partition_name",
    "parts_dir",
    "read_consistent",
    "readable_files",
    "recording_files",
    "recording_part_name",
    "rejects_error",
    "rejects_part_name",
    "rejects_sidecar",
    "sorted_parts",
    "temporary_path",
    "utc_day",
    "utc_stamp",
    "writer_tag",
]

logger = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
REJECTS_PART_GLOB = "rejects-*.parquet"
REJECTS_SUFFIX = ".rejects.parquet"
ALERTS_SUFFIX = ".alerts.parquet"
#: The name prefix of a dataset partition's merged file (see `tesaiot_data.files.compaction`).
COMPACTED_PREFIX = "compacted-"
_PARTS_SUFFIX = ".parts"
_PART_PREFIX = "part-"
# Names of other tools' bookkeeping (temporary files, Spark's _SUCCESS), never data.
_HIDDEN = (".", "_")
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})")
_HOST_UNSAFE = re.compile(r"[^A-Za-z0-9-]")
_HOST_MAX = 32  # characters of the host name kept in a part file's name
# How many times a dataset read starts again when a compaction changed the files under it.
_READ_ATTEMPTS = 10
_T = TypeVar("_T")
# A Path stays a Path, a StorePath a StorePath.
_L = TypeVar("_L", bound=Location)
# Why a listing leaves a file or folder out (the end of its warning).
_LINKED = "symbolic links to folders are not entered (move the files into a real folder)"
_FINISHED = (
    "the parts folders of recordings that have finished (their file beside is read); "
    "delete them when the file is whole"
)
_NOT_PARQUET = "not Parquet files"
_OUTSIDE = (
    "Parquet files outside the date=YYYY-MM-DD partitions, such as snapshots of the window "
    "(their rows are in the partitions too); read one with load_recording(file), or move it "
    "into its date= folder to add its rows"
)
_WARNED: set[tuple[str, ...]] = set()
_WARNED_MAX = 1000
_SHOWN_MAX = 5

_WHAT_A_RECORDING_IS = (
    "a recording is a Parquet file written by tesaiot-data (write_frame, Recorder, "
    "DatasetWriter), an unfinished recording's <file>.parts folder or a dataset folder, "
    f"with the columns {', '.join(COLUMNS)}"
)
_USE_LOAD_REJECTS = (
    "use load_rejects() for the rejected messages, and load_recording() on the recording beside it"
)

# --- names -----------------------------------------------------------------------------------


def parts_dir(path: _L) -> _L:
    """Return the folder of an unfinished recording's part files, `<path>.parts`."""
    return cast(_L, path.with_name(path.name + _PARTS_SUFFIX))


def is_parts_dir(path: Location) -> bool:
    """Return whether `path` is named as a recording's parts folder (`<file>.parts`)."""
    return path.name.endswith(_PARTS_SUFFIX)


def rejects_sidecar(path: _L) -> _L:
    """Return the rejects file beside a recording, `<stem>.rejects.parquet`."""
    return cast(_L, path.with_name(path.stem + REJECTS_SUFFIX))


def alerts_sidecar(path: _L) -> _L:
    """Return the alerts file beside a recording, `<stem>.alerts.parquet`."""
    return cast(_L, path.with_name(path.stem + ALERTS_SUFFIX))


def recording_part_name(number: int) -> str:
    """Return the name of a recording's `number`th part file, `part-NNNNNN.parquet`."""
    return f"{_PART_PREFIX}{number:06d}.parquet"


def rejects_part_name(number: int) -> str:
    """Return the name of a recording's `number`th rejects part, `rejects-NNNNNN.parquet`."""
    return f"rejects-{number:06d}.parquet"


def temporary_path(path: _L) -> _L:
    """Return a new hidden temporary name beside `path`, `.<name>.<8 hex>.tmp`.

    Never matched by the readers' `part-*.parquet` globs, and skipped by pyarrow.dataset
    discovery, which ignores names starting with "." or "_".
    """
    return cast(_L, path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp"))


def utc_stamp(moment: datetime) -> str:
    """Return a time as the UTC stamp of file names, `YYYYmmddTHHMMSSffffff`.

    The stamps of later times sort after earlier ones, to the microsecond.
    """
    return moment.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def writer_tag() -> str:
    """Return `<host>-<pid>` of this process, safe in a file name: the short host name only.

    The host name keeps its first 32 letters, digits and `-`, the rest as `_`.
    """
    host = socket.gethostname().split(".", 1)[0]
    host = _HOST_UNSAFE.sub("_", host)[:_HOST_MAX].strip("-") or "host"
    return f"{host}-{os.getpid()}"


def dataset_part_name(stamp: str, tag: str) -> str:
    """Return a new dataset part's name, `part-<stamp>-<tag>-<8 hex>.parquet`.

    Args:
        stamp: The flush time (`utc_stamp`); names sort by it first.
        tag: The writer (`writer_tag`); with the random suffix, the name is unique.
    """
    return f"{_PART_PREFIX}{stamp}-{tag}-{secrets.token_hex(4)}.parquet"


def compacted_name(moment: datetime) -> str:
    """Return a new compacted file's name, `compacted-<UTC stamp>-<8 hex>.parquet`."""
    return f"{COMPACTED_PREFIX}{utc_stamp(moment)}-{secrets.token_hex(4)}.parquet"


def partition_name(day: date | str) -> str:
    """Return the folder name of a dataset's date partition, `date=YYYY-MM-DD`."""
    return f"date={day}"


def partition_day(name: str) -> date | None:
    """Return the day of a `date=YYYY-MM-DD` folder name, or None for another name."""
    match = _PARTITION.fullmatch(name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def utc_day(ns: int) -> date:
    """Return the UTC date of an epoch time in nanoseconds (its dataset partition)."""
    return datetime.fromtimestamp(ns // 10**9, tz=timezone.utc).date()


def sorted_parts(paths: Iterable[_L]) -> list[_L]:
    """Return part files in the order they were written.

    A recording's part-1000000 sorts after part-999999: shorter numbered names first. A
    dataset's part-<UTC stamp>-<host>-<pid>-... names sort by time as they are, whatever the
    length of each writer's host name.
    """

    def key(path: _L) -> tuple[str, int, str]:
        numbered = path.name.split("-", 1)[-1].removesuffix(".parquet").isdigit()
        return str(path.parent), len(path.name) if numbered else 0, path.name

    return sorted(paths, key=key)


# --- what is not a recording -------------------------------------------------------------------


def rejects_error(path: Location) -> NotARecordingError:
    """Return the error for a rejects file read as telemetry."""
    return NotARecordingError(
        f"{path} holds a recording's rejected messages, not its telemetry",
        hint=_USE_LOAD_REJECTS,
    )


def not_parquet_error(path: Location, cause: BaseException) -> NotARecordingError:
    """Return the error for a file that is not Parquet (or only part of a Parquet file)."""
    return NotARecordingError(
        f"{path} is not a Parquet file, or only part of one (a half-copied file): {cause}",
        hint=_WHAT_A_RECORDING_IS,
    )


def not_telemetry_error(path: Location, message: str) -> NotARecordingError:
    """Return the error for a file or folder that is not a telemetry recording."""
    return NotARecordingError(f"{path} {message}", hint=_WHAT_A_RECORDING_IS)


# --- names that are not UTF-8 ----------------------------------------------------------------


def escaped(path: PurePath | StorePath | str) -> str:
    r"""Return a path as printable text: bytes that are not UTF-8 as `\xff` escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _is_utf8(path: PurePath | StorePath | str) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_utf8_path(path: Location) -> None:
    """Raise a `NotARecordingError` when `path`'s name is not UTF-8 (nothing can open it)."""
    if not _is_utf8(path.absolute()):
        raise NotARecordingError(
            f"{escaped(path.absolute())} cannot be read: its name is not UTF-8, and pyarrow "
            "and DuckDB open only UTF-8 paths",
            hint="rename the file or folder to a UTF-8 name, e.g. with mv",
        )


def readable_files(paths: Iterable[_L], *, warn: bool = True) -> list[_L]:
    """Return `paths` without those whose name is not UTF-8, each skipped named in a warning."""
    kept = []
    for path in paths:
        if _is_utf8(path):
            kept.append(path)
        elif warn:
            logger.warning(
                "skipping %s: its name is not UTF-8, which pyarrow and DuckDB cannot open; "
                "rename it to read its rows",
                escaped(path),
            )
    return kept


# --- listing ---------------------------------------------------------------------------------


def partition_files(
    folder: Location, names: Iterable[str] | None = None
) -> tuple[list[Location], list[Location]]:
    """Return the files of one dataset folder that hold its rows, and the ones replaced.

    A file is replaced when a compacted file in the same folder lists it in its
    `tesaiot.replaces` metadata (a compaction wrote the merged file and has not yet deleted,
    or stopped before deleting, the files it merged).

    Args:
        folder: A partition folder, such as `root/date=2025-12-09`.
        names: The names of its data files (every visible Parquet file but sidecars),
            when already listed; default: list the folder.

    Returns:
        `(current, replaced)`: the files to read, compacted files first, then the others
        (parts in flush order, other names in name order); and the replaced files still
        present.

    Raises:
        FileNotFoundError: The folder, or a compacted file in it, vanished meanwhile.
        NotARecordingError: A compacted file is not Parquet or has a broken list.
    """
    if names is None:
        found = [folder / name for name, is_file in scan(folder) if is_file and _is_data_name(name)]
        names = [path.name for path in readable_files(found)]
    names = list(names)
    compacted = sorted(name for name in names if name.startswith(COMPACTED_PREFIX))
    replaced: set[str] = set()
    if compacted and len(names) > 1:  # a lone file replaces nothing: no footer to read
        for name in compacted:
            replaced |= compacted_replaces(folder / name)
    current = [folder / name for name in compacted if name not in replaced]
    current += sorted_parts(
        folder / name
        for name in names
        if not name.startswith(COMPACTED_PREFIX) and name not in replaced
    )
    return current, sorted(folder / name for name in names if name in replaced)


def compacted_replaces(path: Location) -> frozenset[str]:
    """Return the names of the files a compacted file replaces (its `tesaiot.replaces`).

    Raises:
        FileNotFoundError: The file vanished (a later compaction replaced it).
        NotARecordingError: It is not Parquet, or its list is not a JSON list of names.
    """
    try:
        filesystem, where = filesystem_path(path)
        with translated(path):
            footer = pq.read_metadata(where, filesystem=filesystem)
        raw = (footer.metadata or {}).get(f"{PREFIX}{REPLACES_KEY}".encode())
    except pa.ArrowInvalid as exc:
        raise not_parquet_error(path, exc) from exc
    if raw is None:
        return frozenset()
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise NotARecordingError(
            f"{path} has a broken {PREFIX}{REPLACES_KEY} list",
            hint="delete that file and run `tesaiot-data compact` again; the files it "
            "merged are still beside it",
        )
    return frozenset(names)


def read_consistent(
    path: _L,
    read: Callable[[list[_L]], _T],
    *,
    days: tuple[date, date] | None = None,
) -> _T:
    """Run `read` on the files of a recording; for a dataset, on one whole state of it.

    A compaction may replace a dataset's parts while they are read: a part that vanished
    before it was opened fails the read, and a listing that overlapped the merged file's
    rename may miss both it and parts already deleted, which listing again after the read
    shows (a compacted file that was not there before). Either way the read starts again.

    Args:
        path: A recording's file, its parts folder (or the file when only its parts folder
            exists), a folder of recordings or a dataset folder.
        read: Called with the files that hold the rows, in row order; it may run more
            than once.
        days: For a dataset, only the `date=YYYY-MM-DD` folders in this inclusive range.

    Returns:
        What `read` returned for the last, whole, state.

    Raises:
        FileNotFoundError: Nothing is at `path`, or the dataset changed under every attempt.
        NotARecordingError: `path` is a rejects file, or its name is not UTF-8.
    """
    check_utf8_path(path)
    if not path.is_dir() or is_parts_dir(path):
        return read(cast(list[_L], _recording_files(path)))  # a path's files are of its kind
    for attempt in range(1, _READ_ATTEMPTS + 1):
        listing = _dataset_listing(path, days)
        try:
            result = read(cast(list[_L], _current_files(listing)))
        except FileNotFoundError as exc:
            if attempt == _READ_ATTEMPTS:
                raise
            logger.debug("%s changed while it was read (%s); reading it again", path, exc)
            continue
        if not _new_compacted_files(listing, _dataset_listing(path, days, warn=False)):
            return result
        logger.debug("%s was compacted while it was read; reading it again", path)
    raise FileNotFoundError(
        f"{path} was compacted during each of {_READ_ATTEMPTS} attempts to read it (hint: "
        "read it again when the compaction has finished)"
    )


def recording_files(path: Location) -> list[Location]:
    """Return the files that hold a recording's rows, in row order: the files readers read.

    For a dataset this is one listing, which a compaction may change at any moment; the
    readers use `read_consistent`, which reads again when it did. This is for counting and
    showing (`tesaiot-data inspect`).

    Args:
        path: A recording's file, its parts folder (or the file when only its parts folder
            exists), a folder of recordings or a dataset folder.

    Returns:
        The files, in the order their rows are read.

    Raises:
        FileNotFoundError: Nothing is at `path`.
        NotARecordingError: `path` is a rejects file, or its name is not UTF-8.
    """
    check_utf8_path(path)
    return _recording_files(path)


def _recording_files(path: Location) -> list[Location]:
    if path.is_file():
        if path.name.endswith(REJECTS_SUFFIX):
            raise rejects_error(path)
        if parts_dir(path).is_dir():
            logger.warning(
                "%s has a leftover %s folder of an unfinished recording; reading the file",
                path,
                parts_dir(path).name,
            )
        return [path]
    if path.is_dir():
        if is_parts_dir(path):
            return sorted_parts(readable_files(path.glob(PART_GLOB)))
        return _current_files(_dataset_listing(path))
    parts = parts_dir(path)
    if parts.is_dir():
        files = sorted_parts(readable_files(parts.glob(PART_GLOB)))
        logger.warning(
            "%s does not exist; reading the %d flushed parts of its unfinished recording",
            path,
            len(files),
        )
        return files
    check_bucket(path)
    raise FileNotFoundError(
        f"no recording at {path}: not a Parquet file, a folder of recordings, a dataset "
        f"folder or a recording with a {parts.name} folder"
    )


def _is_data_name(name: str) -> bool:
    """A file that holds rows: a visible Parquet file that is not a recording's sidecar."""
    return (
        name.endswith(".parquet")
        and not name.startswith(_HIDDEN)
        and not name.endswith((REJECTS_SUFFIX, ALERTS_SUFFIX))
    )


def _dataset_listing(
    root: Location, days: tuple[date, date] | None = None, *, warn: bool = True
) -> dict[Location, list[str]]:
    """Each folder under `root` that holds data files, and their names.

    Every visible Parquet file is a data file, whoever wrote it (a DuckDB or Spark
    partition's `data_0.parquet`, a backfill copied in), except a recording's sidecars and,
    in a recording's `<file>.parts` folder, anything but its parts. Left out, each named
    in a warning given once per process: a `.parts` folder beside its finished file (the
    file is read), folders that are symbolic links, files that are not Parquet, and, in a
    dataset of `date=YYYY-MM-DD` partitions, Parquet files outside them (such as
    `Collector.snapshot()`'s copies of the window, whose rows the partitions hold too).
    Names starting with "." or "_" are other tools' bookkeeping (temporary files, Spark's
    `_SUCCESS`) and are passed over silently, as pyarrow and Spark do.

    With `days`, only the `date=YYYY-MM-DD` folders in that (inclusive) range are entered.
    Files whose path is not UTF-8 are left out, with a warning when `warn`.
    """
    listing: dict[Location, list[str]] = {}
    left_out: dict[str, list[Location]] = {}
    hive = False
    for folder, subfolders, names in walk(root):
        hive = hive or any(partition_day(name) is not None for name in subfolders)
        entered = []
        for name in sorted(subfolders):
            sub = folder / name
            if name.startswith(_HIDDEN) or (days is not None and not _day_wanted(name, days)):
                continue
            if sub.is_symlink():
                left_out.setdefault(_LINKED, []).append(sub)
            elif is_parts_dir(sub) and (folder / name.removesuffix(_PARTS_SUFFIX)).is_file():
                left_out.setdefault(_FINISHED, []).append(sub)
            else:
                entered.append(name)
        subfolders[:] = entered
        if is_parts_dir(folder):
            data = [n for n in names if n.startswith(_PART_PREFIX) and n.endswith(".parquet")]
        else:
            data = [n for n in names if _is_data_name(n)]
            left_out.setdefault(_NOT_PARQUET, []).extend(
                folder / n for n in names if not n.startswith(_HIDDEN) and not _is_parquet(n)
            )
        found = [path.name for path in readable_files((folder / n for n in data), warn=warn)]
        if found:
            listing[folder] = found
    if hive:
        for folder in [f for f in listing if not _in_partition(f, root)]:
            left_out.setdefault(_OUTSIDE, []).extend(folder / n for n in listing.pop(folder))
    if warn:
        for reason, paths in left_out.items():
            if paths:
                _warn_once(root, reason, paths)
    return listing


def _is_parquet(name: str) -> bool:
    return name.endswith(".parquet")


def _in_partition(folder: Location, root: Location) -> bool:
    return any(partition_day(name) is not None for name in _relative(folder, root).parts)


def _relative(path: Location, root: Location) -> PurePath:
    if isinstance(path, StorePath) and isinstance(root, StorePath):
        return path.relative_to(root)
    return Path(str(path)).relative_to(Path(str(root)))


def _warn_once(root: Location, reason: str, paths: list[Location]) -> None:
    # Once per process and set of files: history() and a dashboard list a dataset often.
    shown = sorted(escaped(_relative(path, root)) for path in paths)
    key = (str(root), reason, *shown)
    if key in _WARNED:
        return
    if len(_WARNED) >= _WARNED_MAX:
        _WARNED.clear()
    _WARNED.add(key)
    more = f" and {len(shown) - _SHOWN_MAX} more" if len(shown) > _SHOWN_MAX else ""
    logger.warning(
        "%s: not read: %s%s: %s", escaped(root), ", ".join(shown[:_SHOWN_MAX]), more, reason
    )


def _day_wanted(name: str, days: tuple[date, date]) -> bool:
    day = partition_day(name)
    return day is None or days[0] <= day <= days[1]


def _current_files(listing: Mapping[Location, list[str]]) -> list[Location]:
    files: list[Location] = []
    for folder in sorted(listing, key=str):
        files += partition_files(folder, listing[folder])[0]
    return files


def _new_compacted_files(
    before: Mapping[Location, list[str]], after: Mapping[Location, list[str]]
) -> bool:
    for folder, names in after.items():
        seen = set(before.get(folder, ()))
        if any(name.startswith(COMPACTED_PREFIX) and name not in seen for name in names):
            return True
    return False
