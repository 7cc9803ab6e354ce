"""Wire shapes of OpenAI's Administration API for projects (``/v1/organization/projects``
and its ``users``, ``api_keys`` and ``service_accounts``).

Field names and ``object`` values are OpenAI's. Extensions, marked as such: a service
account may be made with a ``role`` (OpenAI's are always ``member``), a key shows its
``expires_at``, a project user may be a ``reader``, and a project has a ``weight`` (its
share of spot capacity at equal priority, settable by admins). Users have no e-mail
address here: ``email`` is always null.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inferbatch.domain import Role

MAX_NAME_LENGTH = 256
MAX_WEIGHT = 1000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- projects ---------------------------------------------------------------------------------


class Project(_Wire):
    id: str
    object: Literal["organization.project"] = "organization.project"
    name: str
    created_at: int
    archived_at: int | None
    status: Literal["active", "archived"]
    weight: int = 1
    """Extension: the project's share of spot capacity at equal priority (fair share)."""


class ProjectCreate(_Request):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)


class ProjectUpdate(_Request):
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_LENGTH)
    weight: int | None = Field(
        default=None,
        ge=1,
        le=MAX_WEIGHT,
        description="Extension: the share of spot capacity at equal priority (admins only).",
    )


# -- users ------------------------------------------------------------------------------------


class ProjectUser(_Wire):
    id: str
    object: Literal["organization.project.user"] = "organization.project.user"
    name: str
    email: str | None = None
    role: Role
    added_at: int


class ProjectUserCreate(_Request):
    user_id: str = Field(min_length=1)
    role: str = Field(description="owner, member or reader (extension).")


class ProjectUserUpdate(_Request):
    role: str = Field(description="owner, member or reader (extension).")


class ProjectUserDeleted(_Wire):
    id: str
    object: Literal["organization.project.user.deleted"] = "organization.project.user.deleted"
    deleted: bool = True


# -- service accounts -------------------------------------------------------------------------


class ServiceAccount(_Wire):
    id: str
    object: Literal["organization.project.service_account"] = "organization.project.service_account"
    name: str
    role: Role
    created_at: int


class ServiceAccountCreate(_Request):
    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    role: str = Field(default="member", description="Extension: owner, member or reader.")


class ServiceAccountApiKey(_Wire):
    """The new key of a service account: the only time its value is shown."""

    id: str
    object: Literal["organization.project.service_account.api_key"] = (
        "organization.project.service_account.api_key"
    )
    value: str
    name: str | None
    created_at: int


class CreatedServiceAccount(ServiceAccount):
    api_key: ServiceAccountApiKey


class ServiceAccountDeleted(_Wire):
    id: str
    object: Literal["organization.project.service_account.deleted"] = (
        "organization.project.service_account.deleted"
    )
    deleted: bool = True


# -- keys -------------------------------------------------------------------------------------


class ApiKeyOwner(_Wire):
    type: Literal["user", "service_account"]
    user: ProjectUser | None = None
    service_account: ServiceAccount | None = None


class ProjectApiKey(_Wire):
    id: str
    object: Literal["organization.project.api_key"] = "organization.project.api_key"
    redacted_value: str
    name: str | None
    created_at: int
    last_used_at: int | None
    expires_at: int | None = Field(default=None, description="Extension: when it stops working.")
    owner: ApiKeyOwner


class ProjectApiKeyDeleted(_Wire):
    id: str
    object: Literal["organization.project.api_key.deleted"] = "organization.project.api_key.deleted"
    deleted: bool = True
