"""A running batch's output as it settles: ``GET /v1/batches/{id}/output``.

The lines are those of the output and error files (one per settled request, in OpenAI's
batch-output format), handed out in the order the requests settled, a page at a time. The
cursor after a page is opaque (``<settled xid>-<request id>``); following it reads every
settled request exactly once, whatever order workers finish in. A request that is retried
settles again and appears again, with its new result.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferbatch.db import requests as request_rows
from inferbatch.db.types import Conn
from inferbatch.domain import TERMINAL_BATCH_STATUSES, Principal
from inferbatch.errors import InvalidRequest
from inferbatch.scheduler.finalize import result_line
from inferbatch.services.batches import get as get_batch


@dataclass(frozen=True, slots=True)
class OutputPage:
    lines: list[bytes]
    next_after: str | None
    """The cursor to send as ``after`` for the lines that follow (the one sent when this
    page is empty)."""
    complete: bool
    """The batch has ended and every one of its lines was handed out up to here."""
    status: str


def parse_cursor(after: str | None) -> tuple[int, int] | None:
    if after is None:
        return None
    xid, _, request_id = after.partition("-")
    if not (xid.isascii() and xid.isdigit() and request_id.isascii() and request_id.isdigit()):
        raise InvalidRequest(
            "after must be a cursor this endpoint returned (x-inferbatch-next-after).",
            param="after",
        )
    return int(xid), int(request_id)


async def output_page(
    conn: Conn, user: Principal, batch_id: str, after: str | None, limit: int
) -> OutputPage:
    """The next ``limit`` settled lines of a batch after the cursor ``after``."""
    cursor = parse_cursor(after)
    # the status first: if the batch has ended, every result it will have is written
    batch = await get_batch(conn, user, batch_id)
    rows = await request_rows.settled_since(conn, batch_id, cursor, limit)
    lines = [result_line(row)[1] for row in rows]
    last = (rows[-1]["settled_xid"], rows[-1]["id"]) if rows else cursor
    complete = False
    if batch.status in TERMINAL_BATCH_STATUSES and len(rows) < limit:
        complete = not await request_rows.settled_after(conn, batch_id, last)
    return OutputPage(
        lines=lines,
        next_after=f"{last[0]}-{last[1]}" if last is not None else None,
        complete=complete,
        status=batch.status,
    )
