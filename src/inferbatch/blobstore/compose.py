"""Composing one blob from others, in order (how an Upload's parts become its file).

``BlobStore.compose(key, sources, md5=...)`` writes the concatenation of the ``sources``
blobs to ``key`` and returns a :class:`Composed`: its size and sha256 (and md5 when asked),
computed from the bytes in order as they go by. No source is ever held in memory whole,
and ``key`` is whole or absent, as for any write: a missing source raises
``FileNotFoundError``, a store that fails raises ``StorageUnavailable``, and in either case
nothing is left at ``key``. The sources are left as they are.

:func:`compose_by_streaming` is the plain way, for a store whose writes are cheap (the
local directory): read each source and write it. Object storage copies the large sources
server-side instead (:meth:`inferbatch.blobstore.s3.S3BlobStore.compose`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from inferbatch.blobstore import BlobWriter

CHUNK = 1 << 20
"""Bytes read at a time from a source."""


@dataclass(frozen=True, slots=True)
class Composed:
    size: int
    sha256: str
    md5: str | None
    """Hex md5 of the whole blob, when asked for (None otherwise)."""


class Digests:
    """The sha256 (and, when asked, md5) of bytes fed in order, and their count."""

    def __init__(self, *, md5: bool) -> None:
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.size = 0

    def update(self, data: bytes) -> None:
        self._sha256.update(data)
        if self._md5 is not None:
            self._md5.update(data)
        self.size += len(data)

    def result(self) -> Composed:
        md5 = self._md5.hexdigest() if self._md5 is not None else None
        return Composed(self.size, self._sha256.hexdigest(), md5)


class _Streamable(Protocol):
    def open_writer(self, key: str) -> BlobWriter: ...

    def iter_chunks(self, key: str, chunk_size: int = ...) -> Iterator[bytes]: ...


def compose_by_streaming(
    store: _Streamable, key: str, sources: Sequence[str], *, md5: bool = False
) -> Composed:
    """Read each source in turn (``CHUNK`` bytes at a time) and write it to ``key``."""
    digests = Digests(md5=md5)
    with store.open_writer(key) as writer:
        for source in sources:
            for chunk in store.iter_chunks(source, CHUNK):
                digests.update(chunk)
                writer.write(chunk)
    return digests.result()
