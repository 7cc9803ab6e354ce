"""Per-project quotas: admins set limits, uploads and creates are checked against them.

- ``stored_bytes``: the bytes of the project's files (inputs and outputs), checked at
  upload (``/v1/files``, and an Uploads API upload at its create, for its declared size).
- ``queued_requests`` and ``enqueued_tokens``: what the project's live batches still hold
  (a batch holds its requests and their token estimate from create, see
  :mod:`inferbatch.services.estimate`; the counter fold gives them back as requests settle,
  and a terminal batch holds nothing), checked at batch create with what the new batch
  adds.
- ``batches_in_progress``: batches not yet terminal, checked at create.
- ``creates_per_minute``: batches created in the current UTC minute, checked at create.

A check locks the project's usage row and the change it admits is made in the same
transaction, so two racing creates cannot both pass a limit. A refusal is
:class:`~inferbatch.errors.QuotaExceeded` (429) naming the quota, its limit and its use.
Only new work is checked: a limit set below the current use is accepted, and a batch once
accepted runs to its end whatever its project's limits become.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from inferbatch.db import projects as project_rows
from inferbatch.db import quotas as rows
from inferbatch.db.quotas import QUOTAS, ProjectQuotas
from inferbatch.db.types import Conn
from inferbatch.domain import Principal
from inferbatch.errors import Forbidden, InvalidRequest, NotFound, QuotaExceeded

_UNITS = {
    "queued_requests": ("requests are", "this batch adds"),
    "enqueued_tokens": ("tokens are", "this batch adds"),
    "batches_in_progress": ("batches are", "this batch adds"),
    "stored_bytes": ("bytes are", "this file adds"),
    "creates_per_minute": ("batches were created this minute", "this batch adds"),
}
"""How a refusal words each quota's use."""


def _check(quotas: ProjectQuotas, name: str, adds: int) -> None:
    limit = quotas.limits[name]
    used = quotas.usage[name]
    if limit is not None and used + adds > limit:
        in_use, adding = _UNITS[name]
        verb = "" if name == "creates_per_minute" else " in use"
        raise QuotaExceeded(
            f"Project {quotas.project_id}'s quota {name} is {limit}; {used} {in_use}{verb} "
            f"and {adding} {adds}.",
            param=name,
        )


async def admit_batch(
    conn: Conn, project_id: str, *, requests: int, tokens: int, now: datetime
) -> None:
    """Check a batch of ``requests`` requests and ``tokens`` estimated tokens against the
    project's quotas and count its create; the caller inserts the batch holding them in
    this transaction (the usage row stays locked until it ends)."""
    quotas = await rows.lock(conn, project_id, now)
    _check(quotas, "creates_per_minute", 1)
    _check(quotas, "batches_in_progress", 1)
    _check(quotas, "queued_requests", requests)
    _check(quotas, "enqueued_tokens", tokens)
    await rows.count_create(conn, project_id, now)


async def admit_bytes(conn: Conn, project_id: str, size: int, now: datetime) -> None:
    """Check ``size`` more stored bytes against the project's quota; the caller stores the
    file in this transaction."""
    _check(await rows.lock(conn, project_id, now), "stored_bytes", size)


async def _project(conn: Conn, project_id: str) -> None:
    if await project_rows.get_project(conn, project_id) is None:
        raise NotFound(f"No project with id {project_id!r}.")


async def get(conn: Conn, principal: Principal, project_id: str, now: datetime) -> ProjectQuotas:
    """The project's limits and use: admins read any project's, every key of the project
    its own (another project answers 404, as its objects do)."""
    if not principal.is_admin and principal.project_id != project_id:
        raise NotFound(f"No project with id {project_id!r}.")
    await _project(conn, project_id)
    return await rows.read(conn, project_id, now)


def _limits(changes: Mapping[str, int | None]) -> dict[str, int | None]:
    if not changes:
        raise InvalidRequest(f"Give at least one of {', '.join(QUOTAS)}.")
    for name, value in changes.items():
        if name not in QUOTAS:
            raise InvalidRequest(
                f"Unknown quota {name!r}; the quotas are {', '.join(QUOTAS)}.", param=name
            )
        if value is not None and value < 0:
            raise InvalidRequest(f"{name} must be 0 or more, or null (unlimited).", param=name)
    return dict(changes)


async def set_limits(
    conn: Conn,
    principal: Principal,
    project_id: str,
    changes: Mapping[str, int | None],
    now: datetime,
) -> ProjectQuotas:
    """Set some of the project's limits (admins only; None: unlimited). A limit below the
    current use is accepted: it refuses new work until the use falls under it."""
    if not principal.is_admin:
        raise Forbidden("Setting quotas needs an admin API key.")
    await _project(conn, project_id)
    limits = _limits(changes)
    await rows.set_limits(conn, project_id, limits, now)
    return await rows.read(conn, project_id, now)
