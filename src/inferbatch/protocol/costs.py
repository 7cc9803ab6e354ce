"""OpenAI's costs API wire shapes (``GET /v1/organization/costs``), and inferbatch's
extensions to them.

The official SDK's ``client.admin.organization.usage.costs`` types are the contract: a
page of day buckets, each with results of ``object: "organization.costs.result"`` whose
``amount`` is ``{value, currency}``. Extension fields (GPU time, savings, requests) are
marked as such. Objects belong to a user today, so ``project_id`` is always null and
``user_id`` groups what ``project_id`` will group once projects exist.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from inferbatch.protocol.openai import CostSavings

GroupBy = Literal["user_id", "line_item"]
GROUP_BY: tuple[GroupBy, ...] = ("user_id", "line_item")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CostAmount(_Wire):
    value: float
    currency: str = Field(description='Lowercase ISO 4217, e.g. "usd".')


class CostsResult(_Wire):
    object: Literal["organization.costs.result"] = "organization.costs.result"
    amount: CostAmount
    line_item: str | None = Field(
        default=None, description='With group_by=line_item: "<model>, <pool>".'
    )
    project_id: str | None = Field(
        default=None, description="Always null: objects belong to users (group by user_id)."
    )
    user_id: str | None = Field(default=None, description="With group_by=user_id.")
    quantity: float | None = Field(
        default=None, description="With group_by=line_item: the GPU-seconds spent."
    )
    quantity_unit: Literal["duration_seconds"] | None = None
    gpu_seconds: float = Field(description="Extension: GPU-seconds spent.")
    saved: CostSavings = Field(
        description="Extension: what spot capacity and deduplication saved against "
        "dedicated capacity alone."
    )
    all_dedicated_amount: float = Field(
        description="Extension: the same work on dedicated capacity alone."
    )
    requests: int = Field(description="Extension: requests settled (completed or failed).")


class CostsBucket(_Wire):
    object: Literal["bucket"] = "bucket"
    start_time: int = Field(description="Unix seconds, a UTC midnight (inclusive).")
    end_time: int = Field(description="Unix seconds, the next UTC midnight (exclusive).")
    results: list[CostsResult]


class CostsPage(_Wire):
    object: Literal["page"] = "page"
    data: list[CostsBucket]
    has_more: bool
    next_page: str | None = Field(
        default=None, description="Send as page= for the next buckets; null on the last page."
    )
