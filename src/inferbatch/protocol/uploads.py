"""OpenAI's wire shapes of the Uploads API: one file sent in parts (``/v1/uploads``).

The official SDK's types (``openai.types.Upload``, ``openai.types.uploads.UploadPart``)
are the contract. Request models check shape only; the rules that need the deployment's
settings (sizes, purposes, MIME types, expiry bounds, part ids) belong to
:mod:`inferbatch.services.upload_sessions`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inferbatch.protocol.openai import ExpiresAfter, FileObject

UploadStatus = Literal["pending", "completed", "cancelled", "expired"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UploadCreateRequest(_Wire):
    """The body of ``POST /v1/uploads``."""

    bytes: int = Field(description="The size of the whole file, which the parts must add up to.")
    filename: str
    mime_type: str
    purpose: str
    expires_after: ExpiresAfter | None = Field(
        default=None, description="When the completed file expires (1 hour to 30 days)."
    )


class UploadCompleteRequest(_Wire):
    """The body of ``POST /v1/uploads/{upload_id}/complete``."""

    part_ids: list[str] = Field(description="The parts, in the order of the file.")
    md5: str | None = Field(
        default=None, description="The hex md5 of the whole file, checked when given."
    )


class Upload(_Wire):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: UploadStatus
    file: FileObject | None = Field(description="The file, once the upload is completed.")


class UploadPart(_Wire):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
