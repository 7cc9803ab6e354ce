"""Where file contents live. Rows hold metadata; bytes live behind this interface.

Two stores implement :class:`BlobStore`:

- ``LocalBlobStore`` (:mod:`inferbatch.blobstore.local`): a directory, the default; every
  api and scheduler replica must share it.
- ``S3BlobStore`` (:mod:`inferbatch.blobstore.s3`): an S3-compatible bucket (AWS S3,
  MinIO, Cloudflare R2, Ceph, Google Cloud Storage's interoperability API), chosen with
  ``INFERBATCH_BLOB_URL=s3://bucket/prefix``.

Besides streamed writes and reads, a store composes a blob from others in order
(:mod:`inferbatch.blobstore.compose`: an Upload's parts become its file).

:func:`open_blob_store` picks one from the settings. The interface is blocking; the
async helpers below (:func:`writing`, :func:`open_stream`) run every call in a thread, so
no blob I/O ever runs on the event loop. A store wraps its own failures once, at its
boundary: an unreachable or misconfigured store raises
:class:`~inferbatch.errors.StorageUnavailable` (HTTP 503, "try again later"), a missing
blob raises ``FileNotFoundError``. In both cases a blob is either whole or absent.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, BinaryIO, Protocol

from inferbatch.blobstore.compose import Composed
from inferbatch.blobstore.local import LocalBlobStore
from inferbatch.errors import StorageUnavailable

if TYPE_CHECKING:
    from inferbatch.config import Settings

__all__ = [
    "BlobStore",
    "BlobWriter",
    "Composed",
    "LocalBlobStore",
    "StorageUnavailable",
    "new_blob_key",
    "open_blob_store",
    "open_stream",
    "parse_blob_url",
    "writing",
]


class BlobWriter(Protocol):
    """Receives a blob's bytes; the blob exists only once the context exits cleanly.

    An exception inside the context (or while the blob is being completed) leaves no
    blob behind.
    """

    def write(self, data: bytes) -> None: ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str: ...

    def __enter__(self) -> BlobWriter: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


class BlobStore(Protocol):
    """Blocking interface; async callers run it in a thread.

    ``open_reader`` and ``iter_chunks`` raise FileNotFoundError for a missing key; every
    method raises StorageUnavailable when the store cannot be reached or refuses access.
    """

    def open_writer(self, key: str) -> BlobWriter: ...

    def open_reader(self, key: str) -> BinaryIO: ...

    def iter_chunks(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def compose(self, key: str, sources: Sequence[str], *, md5: bool = False) -> Composed:
        """Write the ``sources`` blobs, in order, to ``key``; their size and sha256 (and
        md5 with ``md5``) come back. ``key`` is whole or absent afterwards; a missing
        source raises FileNotFoundError. See :mod:`inferbatch.blobstore.compose`."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable, with a reason a person can act on, unless the store
        answers (called at start and by ``/readyz``; cheap)."""
        ...


def new_blob_key(prefix: str) -> str:
    return f"{prefix}/{secrets.token_hex(16)}"


_BLOB_URL = re.compile(
    r"^s3://(?P<bucket>[A-Za-z0-9][A-Za-z0-9._-]{1,220}[A-Za-z0-9])(?P<prefix>/.*)?$"
)


def parse_blob_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")`` (prefix may be "").

    Raises ValueError for anything else.
    """
    match = _BLOB_URL.match(url.strip())
    if match is None:
        raise ValueError(
            f"invalid blob URL {url!r}: use s3://BUCKET or s3://BUCKET/PREFIX "
            "(endpoint, region and credentials come from the AWS_* settings)"
        )
    prefix = (match.group("prefix") or "").strip("/")
    if ".." in prefix.split("/"):
        raise ValueError(f"invalid blob URL {url!r}: '..' in the prefix")
    return match.group("bucket"), prefix


def open_blob_store(settings: Settings) -> BlobStore:
    """The store the settings name: ``blob_url`` (object storage) when set, else the
    local directory ``blob_root``. Makes no network call; call ``check()`` for that."""
    if settings.blob_url:
        from inferbatch.blobstore.s3 import S3BlobStore

        bucket, prefix = parse_blob_url(settings.blob_url)
        return S3BlobStore(bucket, prefix, region=settings.blob_region)
    return LocalBlobStore(settings.blob_root)


def describe(settings: Settings) -> str:
    """Where the settings put file contents, for start-up messages."""
    return settings.blob_url or str(settings.blob_root)


@asynccontextmanager
async def writing(blobs: BlobStore, key: str) -> AsyncIterator[BlobWriter]:
    """``async with writing(blobs, key) as w``: a writer opened and completed (or, on an
    exception, discarded) in a thread. Call ``w.write`` through ``asyncio.to_thread``."""
    manager = await asyncio.to_thread(blobs.open_writer, key)
    writer = await asyncio.to_thread(manager.__enter__)
    try:
        yield writer
    except BaseException as exc:
        await asyncio.to_thread(manager.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await asyncio.to_thread(manager.__exit__, None, None, None)


async def open_stream(
    blobs: BlobStore, key: str, chunk_size: int = 1 << 18
) -> AsyncIterator[bytes]:
    """Open ``key`` now (FileNotFoundError and StorageUnavailable are raised here, before
    a response starts) and return its chunks, each read in a thread."""
    reader = await asyncio.to_thread(blobs.open_reader, key)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(reader.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(reader.close)

    return chunks()
