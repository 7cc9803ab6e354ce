"""The audit log: what a change is called, who made it, and who may read the log.

Every change goes through a route that is not GET, HEAD or OPTIONS (the API's and the
portal's) or through a CLI command. The API's middleware (``api/trail.py``) turns each such
request into one :class:`~inferbatch.db.audit.Event` with :func:`request_event`; the CLI
appends its own in the transaction of its change (:func:`cli_event`). Only identifiers,
names, the route, the status and error code, the address and the user agent are kept:
never a body, a header, a cookie, a key or a secret.

Reading the log (:func:`list_logs`): admins read every row, a project owner's key its
project's rows, anyone else is refused.
"""

from __future__ import annotations

import getpass
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from inferbatch.db import audit as rows
from inferbatch.db.types import Conn
from inferbatch.domain import Principal
from inferbatch.errors import Forbidden, InvalidRequest
from inferbatch.protocol import audit as wire

MAX_PAGE = 100
MAX_USER_AGENT = 256
KEY_PREFIX_LENGTH = 7
"""What a refused key leaves in the log: as many characters as a key's stored prefix."""
MIN_KEY_LENGTH_FOR_PREFIX = 20
"""A refused value shorter than this keeps no prefix: its head would be most of it."""

EVENT_TYPES: Mapping[tuple[str, str], str] = {
    # the REST API
    ("POST", "/v1/files"): "file.created",
    ("DELETE", "/v1/files/{file_id}"): "file.deleted",
    ("POST", "/v1/batches"): "batch.created",
    ("POST", "/v1/batches/{batch_id}/cancel"): "batch.cancelled",
    ("POST", "/v1/batches/{batch_id}/retry"): "batch.retried",
    ("POST", "/v1/batches/{batch_id}/clone"): "batch.cloned",
    ("POST", "/v1/requests/{request_id}/retry"): "request.retried",
    ("POST", "/v1/webhook_endpoints"): "webhook_endpoint.created",
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}"): "webhook_endpoint.updated",
    ("DELETE", "/v1/webhook_endpoints/{webhook_endpoint_id}"): "webhook_endpoint.deleted",
    (
        "POST",
        "/v1/webhook_endpoints/{webhook_endpoint_id}/rotate_secret",
    ): "webhook_endpoint.secret_rotated",
    ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}/test"): "webhook_endpoint.tested",
    ("POST", "/v1/uploads"): "upload.created",
    ("POST", "/v1/uploads/{upload_id}/parts"): "upload.part_added",
    ("POST", "/v1/uploads/{upload_id}/complete"): "upload.completed",
    ("POST", "/v1/uploads/{upload_id}/cancel"): "upload.cancelled",
    ("POST", "/v1/messages/batches"): "message_batch.created",
    ("POST", "/v1/messages/batches/{batch_id}/cancel"): "message_batch.cancelled",
    ("DELETE", "/v1/messages/batches/{batch_id}"): "message_batch.deleted",
    ("POST", "/v1/organization/projects"): "project.created",
    ("POST", "/v1/organization/projects/{project_id}"): "project.updated",
    ("POST", "/v1/organization/projects/{project_id}/archive"): "project.archived",
    ("POST", "/v1/organization/projects/{project_id}/quotas"): "quota.updated",
    ("POST", "/v1/organization/projects/{project_id}/users"): "user.added",
    ("POST", "/v1/organization/projects/{project_id}/users/{user_id}"): "user.updated",
    ("DELETE", "/v1/organization/projects/{project_id}/users/{user_id}"): "user.deleted",
    ("DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}"): "api_key.deleted",
    (
        "POST",
        "/v1/organization/projects/{project_id}/service_accounts",
    ): "service_account.created",
    (
        "DELETE",
        "/v1/organization/projects/{project_id}/service_accounts/{account_id}",
    ): "service_account.deleted",
    # the portal
    ("POST", "/login"): "login.succeeded",
    # single sign-on: the provider sends the browser back with a GET that signs it in
    ("GET", "/login/oidc/callback"): "login.succeeded",
    ("POST", "/project"): "session.project_changed",
    ("POST", "/logout"): "logout.succeeded",
    ("POST", "/batches/new"): "batch.created",
    ("POST", "/files/upload"): "file.created",
    ("POST", "/batches/{batch_id}/cancel"): "batch.cancelled",
    ("POST", "/batches/{batch_id}/clone"): "batch.cloned",
    ("POST", "/batches/{batch_id}/retry"): "batch.retried",
    ("POST", "/requests/{request_id}/retry"): "request.retried",
}
"""The event type of each changing route (method, path template): OpenAI's names where it
has them. A failed ``x.succeeded`` is recorded as ``x.failed``; any other failed change
keeps its type, with the result ``failed``."""
UNMAPPED = "request.changed"
"""The type of a changing route missing from :data:`EVENT_TYPES` (a test keeps it empty)."""

ACTOR_STATE = "audit_actor"
"""Where a request's resolved actor is left on ``request.state`` for the middleware."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a request acts as, as far as it got: the principal once authenticated, else
    perhaps the first characters of the key it was refused with."""

    type: rows.ActorType
    principal: Principal | None = None
    key_prefix: str | None = None


def note_actor(state: Any, actor: Actor) -> None:
    """Leave ``actor`` on a request's ``state`` for the audit middleware."""
    setattr(state, ACTOR_STATE, actor)


def refused_key_prefix(key: str) -> str | None:
    """What the log keeps of a refused key: its head, only when that is a small part of it."""
    return key[:KEY_PREFIX_LENGTH] if len(key) >= MIN_KEY_LENGTH_FOR_PREFIX else None


def event_type(method: str, template: str, failed: bool) -> str:
    name = EVENT_TYPES.get((method, template), UNMAPPED)
    if failed and name.endswith(".succeeded"):
        return name.removesuffix(".succeeded") + ".failed"
    return name


@dataclass(frozen=True, slots=True)
class Exchange:
    """What the middleware saw of one changing request and its answer."""

    method: str
    template: str
    path_params: Mapping[str, str]
    status: int
    response_id: str | None
    """The ``id`` of a JSON answer (a created object's)."""
    error_code: str | None
    client: str | None
    user_agent: str | None


def _object_id(exchange: Exchange) -> str | None:
    """The innermost object the path names (``.../users/{user_id}``: the user), else the
    object the answer returns (a created one), else the project of the path."""
    params = exchange.path_params
    named = [value for name, value in params.items() if name != "project_id"]
    if named:
        return named[-1]
    return exchange.response_id or params.get("project_id")


def request_event(exchange: Exchange, actor: Actor | None) -> rows.Event:
    """The audit event of one changing request."""
    failed = exchange.status >= 400
    principal = actor.principal if actor is not None else None
    kind: rows.ActorType = (
        actor.type
        if actor is not None
        else ("api_key" if exchange.template.startswith("/v1/") else "session")
    )
    name = event_type(exchange.method, exchange.template, failed)
    object_id = _object_id(exchange)
    project_id = exchange.path_params.get("project_id")
    if project_id is None and name == "project.created" and not failed:
        project_id = exchange.response_id
    if project_id is None and principal is not None:
        project_id = principal.project_id
    return rows.Event(
        type=name,
        actor_type=kind,
        result="failed" if failed else "succeeded",
        project_id=project_id,
        actor_id=principal.id if principal else None,
        actor_name=principal.name if principal else None,
        service_account=principal.service_account if principal else False,
        key_id=principal.key_id if principal else None,
        key_prefix=actor.key_prefix if actor is not None and principal is None else None,
        ip_address=exchange.client,
        user_agent=(exchange.user_agent or None) and exchange.user_agent[:MAX_USER_AGENT],
        object_id=object_id,
        status_code=exchange.status,
        error_code=exchange.error_code if failed else None,
        data={"method": exchange.method, "route": exchange.template},
    )


def cli_event(
    type_: str,
    *,
    project_id: str | None,
    object_id: str | None,
    command: str,
    data: Mapping[str, Any] | None = None,
) -> rows.Event:
    """The audit event of a CLI command's change, by the OS user who ran it."""
    try:
        os_user: str | None = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        os_user = None
    return rows.Event(
        type=type_,
        actor_type="cli",
        result="succeeded",
        project_id=project_id,
        actor_name=os_user,
        object_id=object_id,
        data={"command": command, **(data or {})},
    )


# -- reading the log --------------------------------------------------------------------------

ID_PREFIX = "audit_log-"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def public_id(row: rows.Row) -> str:
    """``audit_log-<seq>_<microseconds>`` in hex: the row's place in the list order, so a
    cursor needs no lookup and stays valid after its row is purged."""
    micros = (row.effective_at - _EPOCH) // timedelta(microseconds=1)
    return f"{ID_PREFIX}{row.seq:x}_{micros:x}"


def parse_cursor(value: str, param: str) -> rows.Cursor:
    seq, sep, micros = value.removeprefix(ID_PREFIX).partition("_")
    try:
        if not value.startswith(ID_PREFIX) or not sep:
            raise ValueError(value)
        return _EPOCH + timedelta(microseconds=int(micros, 16)), int(seq, 16)
    except (ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{param} must be the id of an audit log entry.", param=param) from exc


def may_read(principal: Principal) -> bool:
    """Admins, and owners of a project (its rows only)."""
    return principal.is_admin or principal.role == "owner"


def visible_filters(principal: Principal, filters: rows.Filters) -> rows.Filters:
    """``filters`` narrowed to what ``principal`` may read; Forbidden when nothing."""
    if principal.is_admin:
        return filters
    if not may_read(principal):
        raise Forbidden("Reading the audit log needs an admin key or a project owner's key.")
    asked = filters.project_ids
    own = [principal.project_id] if asked is None or principal.project_id in asked else []
    return rows.Filters(**{**_fields(filters), "project_ids": own})


def _fields(filters: rows.Filters) -> dict[str, Any]:
    return {name: getattr(filters, name) for name in rows.Filters.__slots__}


def _user(row: rows.Row) -> wire.AuditUser:
    return wire.AuditUser(id=row.actor_id, name=row.actor_name)


def actor_object(row: rows.Row) -> wire.AuditActor:
    if row.actor_type == "cli":
        return wire.AuditActor(type="cli", cli=wire.AuditCli(os_user=row.actor_name))
    if row.actor_type == "session":
        return wire.AuditActor(
            type="session",
            session=wire.AuditSession(
                user=_user(row), ip_address=row.ip_address, user_agent=row.user_agent
            ),
        )
    key = wire.AuditApiKey(
        id=row.key_id,
        type=None if row.actor_id is None else "service_account" if row.service_account else "user",
        redacted_value=f"{row.key_prefix}..." if row.key_prefix else None,
        ip_address=row.ip_address,
        user_agent=row.user_agent,
    )
    if row.actor_id is not None and row.service_account:
        key.service_account = wire.AuditServiceAccount(id=row.actor_id)
    elif row.actor_id is not None:
        key.user = _user(row)
    return wire.AuditActor(type="api_key", api_key=key)


def log_object(row: rows.Row) -> wire.AuditLog:
    entry = wire.AuditLog(
        id=public_id(row),
        type=row.type,
        effective_at=int(row.effective_at.timestamp()),
        project=(
            wire.AuditProject(id=row.project_id, name=row.project_name) if row.project_id else None
        ),
        actor=actor_object(row),
        result=wire.AuditResult(
            status=row.result, http_status=row.status_code, error_code=row.error_code
        ),
    )
    setattr(entry, row.type, wire.resource(row.object_id, row.data))
    return entry


async def list_logs(
    conn: Conn,
    principal: Principal,
    filters: rows.Filters,
    *,
    limit: int,
    after: str | None = None,
    before: str | None = None,
) -> tuple[list[rows.Row], bool]:
    """A page of the log as ``principal`` may read it, newest first, and whether more
    follow in the direction read."""
    found = await rows.page(
        conn,
        visible_filters(principal, filters),
        limit=limit,
        after=parse_cursor(after, "after") if after else None,
        before=parse_cursor(before, "before") if before and not after else None,
    )
    return found[:limit], len(found) > limit


MAX_UNIX_SECONDS = 253_402_300_799
"""The last second of year 9999: the latest time a filter may name (datetime's limit)."""


def unix(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def filters_of(
    *,
    project_ids: Sequence[str] | None = None,
    event_types: Sequence[str] | None = None,
    actor_ids: Sequence[str] | None = None,
    actor_emails: Sequence[str] | None = None,
    resource_ids: Sequence[str] | None = None,
    gt: int | None = None,
    gte: int | None = None,
    lt: int | None = None,
    lte: int | None = None,
) -> rows.Filters:
    """The filters of OpenAI's query parameters (times in Unix seconds)."""
    return rows.Filters(
        project_ids=project_ids or None,
        types=event_types or None,
        actor_ids=actor_ids or None,
        actor_names=actor_emails or None,
        resource_ids=resource_ids or None,
        gt=unix(gt),
        gte=unix(gte),
        lt=unix(lt),
        lte=unix(lte),
    )
