"""Wire shapes of a project's quotas (``/v1/organization/projects/{id}/quotas``), an
extension in the style of OpenAI's Administration API: the limits (null: unlimited) and
the current use, by quota name."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Limit = int | None


class QuotaLimits(BaseModel):
    """A project's limits; in a POST, only the fields given change (null clears one)."""

    model_config = ConfigDict(extra="forbid")

    queued_requests: Limit = Field(default=None, ge=0)
    """Requests of the project's live batches not settled yet."""
    enqueued_tokens: Limit = Field(default=None, ge=0)
    """Their estimated tokens: input (characters / 4) plus the most each may write."""
    batches_in_progress: Limit = Field(default=None, ge=0)
    """Batches not completed, failed, expired or cancelled yet."""
    stored_bytes: Limit = Field(default=None, ge=0)
    """Bytes of the project's files, inputs and outputs."""
    creates_per_minute: Limit = Field(default=None, ge=0)
    """Batches created in one UTC minute."""


class QuotaUsage(BaseModel):
    """The project's current use of each quota."""

    queued_requests: int
    enqueued_tokens: int
    batches_in_progress: int
    stored_bytes: int
    creates_per_minute: int
    """Batches created in the current UTC minute."""


class ProjectQuotas(BaseModel):
    object: Literal["organization.project.quotas"] = "organization.project.quotas"
    project_id: str
    limits: QuotaLimits
    usage: QuotaUsage
    updated_at: int | None
    """When an admin last set a limit (Unix seconds); null when never."""
