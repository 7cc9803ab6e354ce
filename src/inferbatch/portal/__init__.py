"""The Batch Portal: server-rendered pages (Jinja2, htmx, Bootstrap) served by the api role
at ``/``, calling the same services as the REST API.

``install(app)`` adds its routes and its vendored static files to the ASGI app.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from inferbatch.portal import (
    audit,
    auth,
    batch_detail,
    batch_list,
    batch_new,
    costs,
    dashboard,
    request_pages,
    sso,
    webhooks,
)
from inferbatch.portal.web import HERE, STATIC_PREFIX, Portal


def install(app: FastAPI) -> None:
    """Serve the portal from ``app``: its pages at ``/`` and its assets under
    ``/static/portal``. Call once per app."""
    app.state.portal = Portal.create()
    # /batches/new must come before /batches/{batch_id}.
    for module in (
        auth,
        sso,
        dashboard,
        batch_new,
        batch_list,
        batch_detail,
        request_pages,
        webhooks,
        costs,
        audit,
    ):
        app.include_router(module.router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=HERE / "static"), name="portal-static")
