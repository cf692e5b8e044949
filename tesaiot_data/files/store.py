"""Where files live: a local folder, or an object store (`s3://`, `gs://`, `abfs://`, `hdfs://`).

Every path a user gives is resolved once by `location`: a local path stays a `pathlib.Path`,
a URL becomes a `StorePath`, a path on the pyarrow filesystem that
`pyarrow.fs.FileSystem.from_uri` returns for it. Credentials and endpoints come the standard
way (the AWS credential chain, `AWS_ENDPOINT_URL` for MinIO, Ceph or Garage, pyarrow's URI
options such as `?endpoint_override=host:9000&scheme=http`); a `StorePath` prints as the URL
without its query or user part, so a secret given there never reaches a message.

`StorePath` has the part of `pathlib.Path` that the layout, the writers and the readers use
(names, parents, `is_file`, `glob`, `unlink`...), so they read and write both kinds alike.
Where a store's semantics differ from a disk's, this module says how:

- No rename: `write_object` writes a whole object under a hidden temporary name
  (`.<name>.<8 hex>.tmp`, streamed as a multipart upload, about one row group in memory) and
  copies it to its name on the server, so the name shows the whole object or nothing; an
  unfinished upload of a killed writer is never visible.
- No folders: a folder is a prefix; making one does nothing, removing one deletes what
  is under it; `walk` lists one prefix level at a time, so a reader that skips a `date=`
  prefix never lists it.
- No fsync and no file locks: objects are durable once written.

Errors a user can cause (an unknown scheme, a missing bucket, refused credentials, an
endpoint that does not answer) become a `ConfigError` or a `StorageError` that names the URL
and says what to check (`storage_error`).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from tesaiot_data.errors import ConfigError, StorageError

__all__ = [
    "Location",
    "StorePath",
    "check_bucket",
    "filesystem_path",
    "location",
    "remove_tree",
    "scan",
    "storage_error",
    "translated",
    "walk",
    "write_object",
]

logger = logging.getLogger(__name__)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
# The environment pyarrow's filesystems read: a cached filesystem is one of these settings.
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_", "HADOOP_")
_FILESYSTEMS: dict[tuple[str, ...], pafs.FileSystem] = {}
_FILESYSTEMS_LOCK = threading.Lock()
_LOCAL = pafs.LocalFileSystem()
# Schemes whose path on the filesystem is `bucket/key`, the URL's host and path.
_BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs"})
_SCHEMES_HINT = (
    "use a local path, or a URL pyarrow reads: s3://bucket/prefix (and gs://, abfs://, "
    "hdfs:// where pyarrow is built with them)"
)
_CREDENTIALS_HINT = (
    "check the credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the "
    "instance role (the standard AWS credential chain), and that they may read and write "
    "this bucket"
)


@dataclass(frozen=True, slots=True)
class _Stat:
    st_size: int


class StorePath:
    """A path on an object store, printed as its URL: `s3://bucket/telemetry/date=.../x.parquet`.

    Made by `location` from a URL; derived paths (`parent`, `/`, `with_name`) share its
    filesystem. Comparable, hashable and sortable among paths of one store.

    Args:
        filesystem: The pyarrow filesystem of the store.
        scheme: The URL's scheme, such as `s3`.
        key: The path on `filesystem`, `bucket/prefix/name` (no leading slash).

    Attributes:
        filesystem: The pyarrow filesystem of the store.
        scheme: The URL's scheme.
        key: The path on `filesystem`.
    """

    __slots__ = ("_pure", "filesystem", "scheme")

    def __init__(self, filesystem: pafs.FileSystem, scheme: str, key: str) -> None:
        self.filesystem = filesystem
        self.scheme = scheme
        self._pure = PurePosixPath(key.strip("/") or ".")

    # --- names ---------------------------------------------------------------------------

    @property
    def key(self) -> str:
        """The path on the filesystem, `bucket/prefix/name`."""
        return str(self._pure)

    @property
    def name(self) -> str:
        """The last part of the path."""
        return self._pure.name

    @property
    def stem(self) -> str:
        """The name without its last suffix."""
        return self._pure.stem

    @property
    def suffix(self) -> str:
        """The name's last suffix, such as `.parquet`."""
        return self._pure.suffix

    @property
    def parent(self) -> StorePath:
        """The prefix the path is in."""
        return self._derived(self._pure.parent)

    @property
    def parts(self) -> tuple[str, ...]:
        """The parts of the key."""
        return self._pure.parts

    def with_name(self, name: str) -> StorePath:
        """Return the path with another last part."""
        return self._derived(self._pure.with_name(name))

    def relative_to(self, other: StorePath) -> PurePosixPath:
        """Return the part of this path below `other`.

        Raises:
            ValueError: It is not below `other`.
        """
        return self._pure.relative_to(other._pure)

    def absolute(self) -> StorePath:
        """Return the path itself: a store's paths are absolute."""
        return self

    def resolve(self) -> StorePath:
        """Return the path itself: a store has no links."""
        return self

    def __truediv__(self, name: str) -> StorePath:
        return self._derived(self._pure / name)

    def __str__(self) -> str:
        return f"{self.scheme}://{self._pure}"

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StorePath):
            return NotImplemented
        return (self.scheme, self._pure) == (other.scheme, other._pure)

    def __hash__(self) -> int:
        return hash((self.scheme, self._pure))

    def __lt__(self, other: StorePath) -> bool:
        return (self.scheme, self._pure) < (other.scheme, other._pure)

    def _derived(self, pure: PurePosixPath) -> StorePath:
        return StorePath(self.filesystem, self.scheme, str(pure))

    # --- the store -------------------------------------------------------------------------

    def _info(self) -> pafs.FileInfo:
        with translated(self):
            return self.filesystem.get_file_info(self.key)

    def exists(self) -> bool:
        """Whether an object or a non-empty prefix is at the path."""
        return bool(self._info().type != pafs.FileType.NotFound)

    def is_file(self) -> bool:
        """Whether an object is at the path."""
        return bool(self._info().type == pafs.FileType.File)

    def is_dir(self) -> bool:
        """Whether objects are under the path (a bucket is a folder, even empty)."""
        return bool(self._info().type == pafs.FileType.Directory)

    def is_symlink(self) -> bool:
        """False: a store has no links."""
        return False

    def stat(self) -> _Stat:
        """Return the object's size (`st_size`, bytes).

        Raises:
            FileNotFoundError: No object is at the path.
        """
        info = self._info()
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"no object at {self}")
        return _Stat(int(info.size or 0))

    def iterdir(self) -> Iterator[StorePath]:
        """Yield the objects and prefixes one level under the path."""
        for name, _ in scan(self):
            yield self / name

    def glob(self, pattern: str) -> Iterator[StorePath]:
        """Yield the objects one level under the path whose names match `pattern`."""
        for name, is_file in scan(self):
            if is_file and fnmatch.fnmatchcase(name, pattern):
                yield self / name

    def mkdir(self, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Make nothing (a prefix exists once an object is under it).

        Without `exist_ok`, objects already under the path are an error, as a folder that
        exists is: the check, not atomic, that keeps a second recorder off a recording.

        Raises:
            FileExistsError: Objects are under the path and `exist_ok` is False.
            StorageError: The bucket does not exist.
        """
        del parents
        if not exist_ok and self.exists():
            raise FileExistsError(f"{self} already exists")
        check_bucket(self)  # as a local mkdir fails on a missing mount

    def unlink(self, *, missing_ok: bool = False) -> None:
        """Delete the object.

        Raises:
            FileNotFoundError: No object is at the path and `missing_ok` is False.
        """
        if not self.is_file():
            if missing_ok:
                return
            raise FileNotFoundError(f"no object at {self}")
        with translated(self):
            self.filesystem.delete_file(self.key)


#: A local path or a path on an object store: what the layout, writers and readers take.
Location: TypeAlias = Path | StorePath


def location(path: str | os.PathLike[str] | StorePath) -> Path | StorePath:
    """Return the local path or the store's path a user's path or URL names.

    Args:
        path: A local path (`data/telemetry`, `file:///data/telemetry`), or a URL of a
            store pyarrow reads (`s3://bucket/telemetry`, with options such as
            `?endpoint_override=localhost:9000&scheme=http`).

    Returns:
        A `Path` for a local path, else a `StorePath`.

    Raises:
        ConfigError: The URL's scheme is not a store pyarrow knows, or the URL is malformed;
            the message names it without its query.
        StorageError: The store could not be set up (a bad option).
    """
    if isinstance(path, (Path, StorePath)):
        return path
    text = os.fspath(path)
    match = _URL.match(text)
    if match is None:
        return Path(text)
    scheme = match.group(1).lower()
    if scheme == "file":
        return Path(urlsplit(text).path)
    shown = _shown(text)
    key = (*_authority(text), *sorted(f"{k}={v}" for k, v in os.environ.items() if _env(k)))
    with _FILESYSTEMS_LOCK:
        filesystem = _FILESYSTEMS.get(key)
    if filesystem is not None and scheme in _BUCKET_SCHEMES and "%" not in text:
        parts = urlsplit(text)  # resolved once: from_uri may ask the server for the region
        return StorePath(filesystem, scheme, parts.netloc.rsplit("@", 1)[-1] + parts.path)
    try:
        found, fs_path = pafs.FileSystem.from_uri(text)
    except pa.ArrowInvalid as exc:
        if "Unrecognized filesystem type" in str(exc) or "not supported" in str(exc):
            raise ConfigError(
                f"{shown}: pyarrow has no filesystem for the scheme {scheme}://",
                hint=_SCHEMES_HINT,
            ) from None
        raise ConfigError(
            f"{shown} is not a URL pyarrow reads: {_redacted(str(exc), text)}",
            hint=_SCHEMES_HINT,
        ) from None
    except OSError as exc:
        raise storage_error(exc, shown) from None
    if isinstance(found, pafs.LocalFileSystem):
        return Path(fs_path)
    if filesystem is None:
        filesystem = found
        with _FILESYSTEMS_LOCK:
            _FILESYSTEMS[key] = filesystem
    return StorePath(filesystem, scheme, fs_path)


def _env(name: str) -> bool:
    return name.startswith(_ENV_PREFIXES)


def _authority(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc, parts.query


def _redacted(message: str, url: str) -> str:
    """`message` without the URL's password and query values, which may be secrets."""
    parts = urlsplit(url)
    message = message.replace(url, _shown(url))
    secrets_in_url = [parts.password or ""]
    secrets_in_url += [pair.split("=", 1)[-1] for pair in parts.query.split("&")]
    for secret in secrets_in_url:
        if len(secret) > 2:
            message = message.replace(secret, "***")
    return message


def _shown(url: str) -> str:
    """The URL without user, password and query: what messages print."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"


def check_bucket(path: Location) -> None:
    """Raise a `StorageError` when a store's path names a bucket that does not exist.

    For a path where nothing was found, to say why: a local path passes.

    Raises:
        StorageError: The bucket is missing (or the store refused, or does not answer).
    """
    if not isinstance(path, StorePath) or path.scheme not in _BUCKET_SCHEMES:
        return
    bucket = path.parts[0]
    with translated(path):
        info = path.filesystem.get_file_info(bucket)
    if info.type == pafs.FileType.NotFound:
        raise storage_error(OSError(f"bucket '{bucket}': NoSuchBucket"), str(path))


def filesystem_path(path: Location) -> tuple[pafs.FileSystem, str]:
    """Return the pyarrow filesystem of a path and the path on it (absolute for a local one)."""
    if isinstance(path, StorePath):
        return path.filesystem, path.key
    return _LOCAL, str(path.absolute())


def scan(folder: Location) -> list[tuple[str, bool]]:
    """Return the names one level under a folder or prefix, each with whether it is a file.

    A local folder's links to files count as files, links to folders do not.

    Raises:
        FileNotFoundError: The local folder does not exist.
        StorageError: The store could not be listed.
    """
    if isinstance(folder, StorePath):
        selector = pafs.FileSelector(folder.key, recursive=False, allow_not_found=True)
        with translated(folder):
            infos = folder.filesystem.get_file_info(selector)
        return [
            (info.base_name, info.type == pafs.FileType.File)
            for info in infos
            if info.type != pafs.FileType.NotFound
        ]
    with os.scandir(folder) as entries:
        return [(entry.name, entry.is_file()) for entry in entries]


def walk(root: Location) -> Iterator[tuple[Location, list[str], list[str]]]:
    """Walk a folder top-down as `os.walk` does: `(folder, subfolder names, file names)`.

    The caller may prune the subfolder list in place; a store lists only the prefixes
    entered, one level at a time.
    """
    if not isinstance(root, StorePath):
        for top, subfolders, names in os.walk(root):
            yield Path(top), subfolders, names
        return
    entries = scan(root)
    subfolders = sorted(name for name, is_file in entries if not is_file)
    names = sorted(name for name, is_file in entries if is_file)
    yield root, subfolders, names
    for name in list(subfolders):
        yield from walk(root / name)


def remove_tree(folder: Location) -> None:
    """Delete a folder (or every object under a prefix), ignoring what is already gone."""
    if isinstance(folder, StorePath):
        try:
            with translated(folder):
                folder.filesystem.delete_dir_contents(folder.key, missing_dir_ok=True)
        except OSError as exc:
            logger.warning("could not delete %s: %s", folder, exc)
        return
    import shutil  # noqa: PLC0415

    shutil.rmtree(folder, ignore_errors=True)


def write_object(path: StorePath, write: Callable[[Any], None]) -> StorePath:
    """Write a whole object through `write`, visible at `path` only once it is complete.

    The bytes stream to a hidden temporary object (a multipart upload: memory holds about
    one part), which the server then copies to `path` in one step and which is deleted. A
    writer killed while streaming leaves an unfinished upload, never an object; one killed
    between the copy and the deletion leaves the hidden temporary object, which readers
    skip (a bucket lifecycle rule can expire both).

    Args:
        path: The object to write; an old one is replaced.
        write: Writes the whole content to the binary stream it is given.

    Returns:
        `path`.

    Raises:
        StorageError: The store refused or could not be reached; nothing is left at `path`.
        OSError: Another write failure; the temporary object is deleted.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    filesystem = path.filesystem
    try:
        with translated(path):
            with filesystem.open_output_stream(temp.key) as sink:
                write(sink)
            filesystem.copy_file(temp.key, path.key)
    finally:
        # A stream closed by an error still completes its upload: delete what it made.
        try:
            filesystem.delete_file(temp.key)
        except OSError:
            logger.debug("no temporary object %s to delete", temp)
    return path


@contextmanager
def translated(path: Location | str) -> Iterator[None]:
    """Turn a store's failures inside the block into a `StorageError` naming `path`.

    A missing object becomes a `FileNotFoundError`; local errors pass unchanged.
    """
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        raise storage_error(exc, str(path)) from exc


_MISSING_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist")
_REFUSED = (
    "ACCESS_DENIED",
    "AccessDenied",
    "INVALID_ACCESS_KEY_ID",
    "InvalidAccessKeyId",
    "SIGNATURE_DOES_NOT_MATCH",
    "SignatureDoesNotMatch",
    "INVALID_CLIENT_TOKEN_ID",
    "EXPIRED_TOKEN",
    "HTTP response code 403",
)
_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect")
_MISSING_KEY = ("NO_SUCH_KEY", "NoSuchKey", "Path does not exist", "RESOURCE_NOT_FOUND")


def storage_error(exc: OSError, url: str) -> OSError:
    """Return the error a user should see for a store's failure on `url`.

    Args:
        exc: What pyarrow raised.
        url: The URL (or path) that failed, without secrets.

    Returns:
        A `StorageError` for a missing bucket, refused credentials or an endpoint that does
        not answer; a `FileNotFoundError` for a missing object; else `exc` itself.
    """
    if isinstance(exc, (StorageError, FileNotFoundError)):
        return exc
    text = str(exc)
    if any(mark in text for mark in _MISSING_BUCKET):
        bucket = re.search(r"bucket '([^']*)'", text)
        name = f"the bucket {bucket.group(1)!r}" if bucket else "its bucket"
        return StorageError(
            f"{url}: {name} does not exist",
            hint="create the bucket, or check its name in the URL (and AWS_ENDPOINT_URL: "
            "another server has other buckets)",
            url=url,
        )
    if any(mark in text for mark in _REFUSED):
        return StorageError(
            f"{url}: the store refused the credentials: {_aws_reason(text)}",
            hint=_CREDENTIALS_HINT,
            url=url,
        )
    if any(mark in text for mark in _UNREACHABLE):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        where = f"AWS_ENDPOINT_URL={endpoint}" if endpoint else "the store's endpoint"
        return StorageError(
            f"{url}: the store does not answer at {where}: {_aws_reason(text)}",
            hint="check AWS_ENDPOINT_URL (or ?endpoint_override= in the URL) and that the "
            "server is running and reachable",
            url=url,
        )
    if any(mark in text for mark in _MISSING_KEY):
        return FileNotFoundError(f"nothing at {url}")
    return exc


def _aws_reason(text: str) -> str:
    found = re.search(r"AWS Error (.*?)(?: \(Request ID|$)", text)
    return found.group(1) if found else text
