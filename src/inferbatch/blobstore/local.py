"""``LocalBlobStore``: each blob is a file under a root directory.

Writes go to a temporary name and are renamed into place, so a blob is either whole or
absent. Every api and scheduler replica must see the same directory (one machine, or a
ReadWriteMany volume); for anything larger, object storage (:mod:`inferbatch.blobstore.s3`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from inferbatch.blobstore.compose import Composed, compose_by_streaming
from inferbatch.errors import StorageUnavailable


class _LocalWriter:
    """Context manager: bytes go to a temporary file, renamed into place on success."""

    def __init__(self, final: Path) -> None:
        self._final = final
        self._tmp = final.with_name(final.name + f".tmp-{secrets.token_hex(4)}")
        final.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in __exit__)
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self._size += len(data)

    @property
    def size(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __enter__(self) -> _LocalWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self._final)
        else:
            self._tmp.unlink(missing_ok=True)


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def open_writer(self, key: str) -> _LocalWriter:
        return _LocalWriter(self._path(key))

    def open_reader(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def iter_chunks(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        with self.open_reader(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def compose(self, key: str, sources: Sequence[str], *, md5: bool = False) -> Composed:
        """The sources appended to a temporary file, renamed into place."""
        return compose_by_streaming(self, key, sources, md5=md5)

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageUnavailable(f"blob directory {self.root} does not exist")
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StorageUnavailable(f"blob directory {self.root} is not writable")
