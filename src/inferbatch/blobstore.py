"""Where file contents live. Rows hold metadata; bytes live behind this interface.

``LocalBlobStore`` keeps each blob as a file under a root directory. Writes go to a
temporary name and are renamed into place, so a blob is either whole or absent.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol


class BlobWriter(Protocol):
    """Receives a blob's bytes; the blob exists only once the context exits cleanly."""

    def write(self, data: bytes) -> None: ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    def __enter__(self) -> BlobWriter: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


class BlobStore(Protocol):
    """Blocking interface; async callers run it in a thread."""

    def open_writer(self, key: str) -> BlobWriter: ...

    def open_reader(self, key: str) -> BinaryIO: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


def new_blob_key(prefix: str) -> str:
    return f"{prefix}/{secrets.token_hex(16)}"


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
