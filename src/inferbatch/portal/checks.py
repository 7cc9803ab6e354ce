"""A look at an uploaded input file before a batch is made of it.

Each line goes through the scheduler's own validation (:func:`parse_line`), so the portal
shows exactly the errors ingest would report, line by line, before anything is queued;
duplicate custom_ids, empty files and the request limit are checked the way ingest checks
them. Ingest still validates every batch: this is a preview, not the rule.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import BinaryIO

from inferbatch.blobstore import BlobStore
from inferbatch.scheduler.validation import LineError, parse_line

MAX_SHOWN = 100


@dataclass
class FileCheck:
    endpoint: str
    requests: int = 0
    models: set[str] = field(default_factory=set)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_SHOWN:
            self.errors.append(error)


def check_lines(reader: BinaryIO, endpoint: str, max_requests: int) -> FileCheck:
    """Validate every line of an input file for ``endpoint`` (blocking; constant memory
    apart from the custom_ids seen)."""
    result = FileCheck(endpoint=endpoint)
    first_line: dict[str, int] = {}
    line = 0
    for raw in reader:
        line += 1
        if not raw.strip():
            continue
        result.requests += 1
        if result.requests > max_requests:
            result.add(
                LineError(
                    "too_many_requests", f"The file has more than {max_requests} requests.", line
                )
            )
            break
        parsed = parse_line(raw, line, endpoint)
        if isinstance(parsed, LineError):
            result.add(parsed)
            continue
        if len(result.models) < 5:
            result.models.add(parsed.model)
        seen = first_line.setdefault(parsed.custom_id, line)
        if seen != line:
            result.add(
                LineError(
                    "duplicate_custom_id",
                    f"Duplicate custom_id {parsed.custom_id!r} (first on line {seen}).",
                    line,
                    param="custom_id",
                )
            )
    if result.requests == 0:
        result.add(LineError("empty_file", "The input file is empty.", None))
    return result


async def check_file(
    blobs: BlobStore, blob_key: str, endpoint: str, max_requests: int
) -> FileCheck:
    def run() -> FileCheck:
        with blobs.open_reader(blob_key) as reader:
            return check_lines(reader, endpoint, max_requests)

    return await asyncio.to_thread(run)


def head_lines(
    blobs: BlobStore, blob_key: str, lines: int, max_bytes: int = 256 * 1024
) -> list[str]:
    """The first ``lines`` lines of a blob, reading at most ``max_bytes`` (blocking)."""
    with blobs.open_reader(blob_key) as reader:
        data = reader.read(max_bytes + 1)
    out = data[:max_bytes].decode("utf-8", "replace").splitlines()
    if len(data) > max_bytes and out:
        out.pop()  # cut off mid-line
    return [x for x in out if x.strip()][:lines]
