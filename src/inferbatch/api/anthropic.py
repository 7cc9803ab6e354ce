"""Anthropic's Message Batches API (``/v1/messages/batches``): thin routes over
services/message_batches.py, answering errors in Anthropic's shape.

The official ``anthropic`` SDK works against it with only ``base_url`` changed: the key
comes as ``x-api-key`` or ``Authorization: Bearer``; ``anthropic-version`` (which the SDK
always sends) is accepted and not required, as the API reference has it. Only batches
created here are listed and found here (endpoint ``/v1/messages``).

Every error raised under these routes, including those of authentication and request
validation, is answered as ``{"type": "error", "error": {"type", "message"}}``
(:func:`error_response`): the status's Anthropic type, a state conflict as a 400 (the
API has no 409), an unavailable database or blob store as a 529 ``overloaded_error``
(which the SDK retries).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Coroutine
from typing import IO, Annotated, Any

import psycopg
import psycopg_pool
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from inferbatch.api.deps import AppState, current_user, state
from inferbatch.domain import Principal
from inferbatch.errors import (
    BadValue,
    InferbatchError,
    TooLarge,
    Unavailable,
    from_validation,
)
from inferbatch.protocol.anthropic import (
    DeletedMessageBatch,
    ErrorObject,
    ErrorResponse,
    MessageBatch,
    MessageBatchCreateParams,
    MessageBatchList,
    error_type_for,
)
from inferbatch.services import message_batches as service

log = logging.getLogger(__name__)


def error_response(exc: InferbatchError) -> JSONResponse:
    """``exc`` in Anthropic's error shape, with the status Anthropic would answer."""
    status = exc.status_code
    if status == 409:
        status = 400
    elif isinstance(exc, Unavailable):
        status = 529
    body = ErrorResponse(error=ErrorObject(type=error_type_for(status), message=exc.message))
    return JSONResponse(body.model_dump(), status_code=status, headers=exc.headers())


class _AnthropicRoute(APIRoute):
    """A route whose errors (from its dependencies too) are answered in Anthropic's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except InferbatchError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return error_response(from_validation(exc.errors()))
            except psycopg.DataError as exc:  # as the app maps it: the request's value
                log.info("%s %s: %s", request.method, request.url.path, exc)
                return error_response(BadValue())
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
                log.warning("database unavailable: %s", exc)
                return error_response(Unavailable())
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return error_response(
                    InferbatchError("The server had an error processing the request.")
                )

        return route


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request, or not in a state that allows this"),
        (401, "Missing or invalid API key"),
        (404, "No such Message Batch"),
        (413, "Body too large"),
        (429, "Too many failed authentications"),
        (529, "Database or file storage unavailable; retry"),
    )
}
router = APIRouter(prefix="/v1/messages/batches", route_class=_AnthropicRoute, responses=ERRORS)

UserDep = Annotated[Principal, Depends(current_user)]
StateDep = Annotated[AppState, Depends(state)]


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` written in place (the body is read by hand, with a
    size limit, so the model is not one FastAPI puts among the document's components)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _inline(MessageBatchCreateParams.model_json_schema())}
        },
    }
}


def _base_url(request: Request, st: AppState) -> str:
    return st.settings.public_url or str(request.base_url)


SPOOL_BYTES = 1 << 20
"""A create body is kept in memory up to this size, beyond it in a temporary file."""


async def _read_body(request: Request, limit: int) -> IO[bytes]:
    """The body, refused with a 413 as soon as it is known to exceed ``limit`` bytes (from
    its content-length, or while it streams in), spooled to a temporary file past
    :data:`SPOOL_BYTES` so that a large create does not hold its body in memory."""
    too_large = TooLarge(f"The request body is larger than the limit of {limit} bytes.")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    try:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            spool.write(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return spool


@router.post("", response_model=MessageBatch, openapi_extra=CREATE_BODY)
async def create_message_batch(request: Request, user: UserDep, st: StateDep) -> MessageBatch:
    """Create a Message Batch: ``{"requests": [{"custom_id", "params"}, ...]}``."""
    with await _read_body(request, st.settings.max_message_batch_bytes) as body:
        batch = await service.create(st.db, st.blobs, st.settings, user, body, st.now())
    return service.message_batch(batch, _base_url(request, st))


@router.get("", response_model=MessageBatchList)
async def list_message_batches(
    request: Request,
    user: UserDep,
    st: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: Annotated[str | None, Query(description="The page after (older than) this.")] = None,
    before_id: Annotated[
        str | None, Query(description="The page before (newer than) this.")
    ] = None,
) -> MessageBatchList:
    """The user's Message Batches, newest first."""
    found, has_more = await service.list_page(
        st.db, user, after_id=after_id, before_id=before_id, limit=limit
    )
    base = _base_url(request, st)
    return MessageBatchList(
        data=[service.message_batch(b, base) for b in found],
        has_more=has_more,
        first_id=found[0].id if found else None,
        last_id=found[-1].id if found else None,
    )


@router.get("/{batch_id}", response_model=MessageBatch)
async def retrieve_message_batch(
    batch_id: str, request: Request, user: UserDep, st: StateDep
) -> MessageBatch:
    return service.message_batch(await service.get(st.db, user, batch_id), _base_url(request, st))


@router.post("/{batch_id}/cancel", response_model=MessageBatch)
async def cancel_message_batch(
    batch_id: str, request: Request, user: UserDep, st: StateDep
) -> MessageBatch:
    batch = await service.cancel(st.db, user, batch_id, st.now())
    return service.message_batch(batch, _base_url(request, st))


@router.get(
    "/{batch_id}/results",
    responses={200: {"content": {"application/x-jsonl": {}}, "description": "JSONL."}},
)
async def message_batch_results(batch_id: str, user: UserDep, st: StateDep) -> Response:
    """One line per request: ``{"custom_id", "result": {"type": "succeeded" | "errored" |
    "canceled" | "expired", ...}}``, once the batch has ended."""
    lines = await service.results(st.db, st.blobs, user, batch_id)
    return StreamingResponse(lines, media_type="application/x-jsonl")


@router.delete("/{batch_id}", response_model=DeletedMessageBatch)
async def delete_message_batch(batch_id: str, user: UserDep, st: StateDep) -> DeletedMessageBatch:
    """Delete an ended batch, with its requests and its files."""
    await service.delete(st.db, st.blobs, user, batch_id)
    return DeletedMessageBatch(id=batch_id)
