"""Folders on a local disk or on an object store, through pyarrow's filesystem layer.

A location is a path (`prepared`, `/data/prepared`) or a URI pyarrow can open (`s3://bucket/prefix`,
`gs://bucket/prefix`, `hdfs://...`). Credentials and endpoints come from the environment, read by the
store's own client (S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
AWS_ENDPOINT_URL), never from the URI: a location is written into manifests, runs and logs, so a URI
that carries a user name, a password or a query is refused.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from cxrcommon.errors import UserError, first_line


class StorageError(UserError):
    """A location that cannot be reached or used; the message names it and says why."""


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def absolute(location: str | os.PathLike) -> str:
    """A URI as it is; a path made absolute (what a run records, for workers on any folder)."""
    return str(location) if is_uri(location) else os.path.realpath(location)


# What an S3 failure means, by the error code pyarrow quotes from the AWS SDK.
_S3_REASONS = {
    "NO_SUCH_BUCKET": "its bucket does not exist",
    "ACCESS_DENIED": "access denied: check the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                     "and what they may read and write",
    "SIGNATURE_DOES_NOT_MATCH": "the store refused the credentials (AWS_SECRET_ACCESS_KEY does not match "
                                "AWS_ACCESS_KEY_ID)",
    "INVALID_ACCESS_KEY_ID": "the store does not know AWS_ACCESS_KEY_ID",
    "NETWORK_CONNECTION": "the store cannot be reached (check AWS_ENDPOINT_URL and the network)",
}


def _reason(exc: BaseException) -> str:
    text = first_line(exc, 300)
    code = re.search(r"AWS Error ([A-Z_]+)", text)
    return _S3_REASONS.get(code.group(1), text) if code else text


@dataclass(frozen=True)
class Folder:
    """One folder: `location` as the user wrote it (what messages name), `fs` and `path` to reach it."""

    location: str
    fs: pafs.FileSystem
    path: str

    @classmethod
    def at(cls, location: str | os.PathLike) -> Folder:
        text = str(location).rstrip("/") or "/"
        if not is_uri(text):
            return cls(text, pafs.LocalFileSystem(), os.path.abspath(text))
        parsed = urlparse(text)
        if parsed.username or parsed.password or parsed.query:
            raise StorageError(f"{parsed.scheme}://{parsed.hostname}{parsed.path}: a location may not carry "
                               "credentials or options (they would be written into runs and logs); set them "
                               "in the environment, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL")
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise StorageError(f"{text}: not a path or a URI pyarrow can open ({first_line(exc, 200)})") from None
        return cls(text, fs, path.rstrip("/"))

    def __str__(self) -> str:
        return self.location

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def child(self, *parts: str) -> Folder:
        return Folder("/".join([self.location, *parts]), self.fs, "/".join([self.path, *parts]))

    def file(self, *parts: str) -> str:
        """A file's path inside `fs` (on a local disk: its absolute path)."""
        return "/".join([self.path, *parts])

    def name(self, *parts: str) -> str:
        """A file's name as messages give it: under `location`."""
        return "/".join([self.location, *parts])

    @contextmanager
    def reached(self, doing: str) -> Iterator[None]:
        """Turn an object store's failure inside the block into a StorageError naming the location
        (a local disk's OSError passes as it is: its callers name the file and the OS's reason)."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            if self.is_local:
                raise
            raise StorageError(f"cannot {doing} {self.location}: {_reason(exc)}") from None

    def kind(self, *parts: str) -> pafs.FileType:
        with self.reached("read"):
            return self.fs.get_file_info(self.file(*parts)).type

    def exists(self, *parts: str) -> bool:
        return self.kind(*parts) != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.kind() == pafs.FileType.Directory

    def is_empty(self) -> bool:
        with self.reached("read"):
            return not self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))

    def files(self, suffix: str = "") -> list[str]:
        """The names of the files directly in this folder that end with `suffix`, sorted."""
        return sorted(n for n in self._names(pafs.FileType.File) if n.endswith(suffix))

    def folders(self, prefix: str = "") -> list[str]:
        """The names of the folders directly in this folder that start with `prefix`, sorted."""
        return sorted(n for n in self._names(pafs.FileType.Directory) if n.startswith(prefix))

    def _names(self, kind: pafs.FileType) -> list[str]:
        with self.reached("list"):
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [i.base_name for i in infos if i.type == kind]

    def read_bytes(self, *parts: str) -> bytes:
        with self.reached("read"), self.fs.open_input_stream(self.file(*parts)) as stream:
            return stream.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def write_text(self, text: str, *parts: str) -> None:
        with self.reached("write to"), self.fs.open_output_stream(self.file(*parts)) as stream:
            stream.write(text.encode())

    def delete_file(self, *parts: str) -> None:
        with self.reached("delete in"):
            self.fs.delete_file(self.file(*parts))

    def create(self) -> None:
        with self.reached("create"):
            self.fs.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Delete this folder and everything in it (only for a folder the user asked to replace, or a
        run's checkpoint that its newer ones supersede). On a local disk through shutil, which refuses
        a symbolic link instead of emptying what it points to."""
        if self.is_local:
            shutil.rmtree(self.path)
            return
        with self.reached("delete"):
            self.fs.delete_dir(self.path)

    def size_and_tail(self, count: int, *parts: str) -> tuple[int, bytes]:
        """A file's size and its last `count` bytes (all of it when shorter)."""
        with self.fs.open_input_file(self.file(*parts)) as f:
            size = f.size()
            f.seek(max(0, size - count))
            return size, f.read()

    def upload(self, local_file: str | os.PathLike, *parts: str) -> None:
        """Copy a local file into this folder as `parts`."""
        with self.reached("write to"):
            pafs.copy_files(os.fspath(local_file), self.file(*parts), source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)

    def rename(self, old: str, new: str) -> None:
        """Rename a file in this folder (a local disk renames at once; an object store copies, and the
        new object appears whole)."""
        with self.reached("rename in"):
            self.fs.move(self.file(old), self.file(new))

    def download(self, into: str) -> None:
        """Copy this folder's files into the local folder `into`."""
        with self.reached("download"):
            pafs.copy_files(self.path, into, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())

    def check_reachable(self) -> None:
        """Fail now, naming the location, if the store refuses us or its bucket is missing."""
        if self.is_local:
            return
        bucket = self.path.split("/", 1)[0]
        with self.reached("reach"):
            if self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"cannot reach {self.location}: its bucket {bucket!r} does not exist")
            self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
