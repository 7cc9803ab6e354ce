"""Schemathesis hooks for the stateful run (loaded through ``SCHEMATHESIS_HOOKS``): a check
that no answer carries an id of another project's objects (``INFERBATCH_FOREIGN_IDS``,
comma-separated)."""

from __future__ import annotations

import os
from typing import Any

import schemathesis


@schemathesis.check
def no_other_projects_ids(ctx: Any, response: Any, case: Any) -> None:
    foreign = [i for i in os.environ.get("INFERBATCH_FOREIGN_IDS", "").split(",") if i]
    shown = [i for i in foreign if i.encode() in response.content]
    if shown:
        raise AssertionError(f"the answer carries another project's ids: {shown}")
