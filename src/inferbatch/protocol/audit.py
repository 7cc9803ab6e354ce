"""Wire shapes of OpenAI's audit logs (``GET /v1/organization/audit_logs``).

Field names are OpenAI's: each entry names its ``type`` and carries an object under that
same key (``"batch.created": {"id": ..., "data": {...}}``). Extensions, marked as such: a
``result`` on every entry (OpenAI lists only what succeeded), an actor of type ``cli`` (a
command run on a server), and users' ``name``: users here have names, not addresses, so
``email`` is always null and ``actor_emails[]`` matches names.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class AuditUser(_Wire):
    id: str | None
    email: str | None = None
    name: str | None = Field(default=None, description="Extension: the user's name.")


class AuditSession(_Wire):
    user: AuditUser
    ip_address: str | None
    user_agent: str | None


class AuditServiceAccount(_Wire):
    id: str


class AuditApiKey(_Wire):
    id: str | None
    """The key's id; None when the key was refused (then ``redacted_value`` may say which)."""
    type: Literal["user", "service_account"] | None
    user: AuditUser | None = None
    service_account: AuditServiceAccount | None = None
    redacted_value: str | None = Field(
        default=None, description="Extension: the first characters of a refused key."
    )
    ip_address: str | None = Field(default=None, description="Extension.")
    user_agent: str | None = Field(default=None, description="Extension.")


class AuditCli(_Wire):
    """Extension: a command of the ``inferbatch`` CLI, run on a machine with database access."""

    os_user: str | None


class AuditActor(_Wire):
    type: Literal["session", "api_key", "cli"]
    session: AuditSession | None = None
    api_key: AuditApiKey | None = None
    cli: AuditCli | None = None


class AuditProject(_Wire):
    id: str
    name: str | None


class AuditResult(_Wire):
    """Extension: how the change went."""

    status: Literal["succeeded", "failed"]
    http_status: int | None
    error_code: str | None


class AuditLog(_Wire):
    """One entry; its ``type`` is also the key of an object ``{id, data}`` (OpenAI's shape,
    an extra field here)."""

    id: str
    type: str
    effective_at: int
    project: AuditProject | None
    actor: AuditActor
    result: AuditResult


def resource(object_id: str | None, data: dict[str, Any]) -> dict[str, Any]:
    """The object an entry carries under its ``type``."""
    return {"id": object_id, "data": data}
