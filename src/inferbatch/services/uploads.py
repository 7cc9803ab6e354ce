"""Streaming ``multipart/form-data`` uploads: the file part goes straight to the blob
store and the size limit is enforced while reading (413), never after buffering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from inferbatch.blobstore import BlobStore, BlobWriter, new_blob_key
from inferbatch.errors import InferbatchError, InvalidRequest, TooLarge
from inferbatch.services.estimate import LineEstimate

MAX_FIELD_BYTES = 4096
FLUSH_BYTES = 1 << 20


@dataclass
class UploadResult:
    fields: dict[str, str]
    filename: str | None
    blob_key: str | None
    size: int
    sha256: str
    lines: int = 0
    """Lines of the file part (the last one counts without its newline)."""
    tokens: int = 0
    """The file part's token estimate as batch lines (:mod:`inferbatch.services.estimate`)."""


@dataclass
class _State:
    fields: dict[str, str] = field(default_factory=dict)
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    size: int = 0
    newlines: int = 0
    last_byte: bytes = b""
    file_seen: bool = False
    error: Exception | None = None


async def receive_upload(
    content_type: str,
    body: AsyncIterator[bytes],
    blobs: BlobStore,
    max_bytes: int,
    *,
    field: str = "file",
    key: str | None = None,
    estimate_tokens: bool = True,
) -> UploadResult:
    """Parse a multipart body; the part named ``field`` is stored as a blob at ``key``
    (default: a new ``upload/...`` key), its lines counted and, with
    ``estimate_tokens``, their tokens estimated on the way.

    Raises InvalidRequest for a malformed body, TooLarge past ``max_bytes``,
    StorageUnavailable when the blob store fails. On error no blob is left behind. Every
    blob store call runs in a thread.
    """
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidRequest("Expected a multipart/form-data body.")
    key = key or new_blob_key("upload")
    st = _State()
    writer_cm = await asyncio.to_thread(blobs.open_writer, key)
    writer: BlobWriter = writer_cm.__enter__()
    estimate = LineEstimate()

    def store(data: bytes) -> None:
        # in the writer's thread: parsing the lines for the estimate is CPU work
        writer.write(data)
        if estimate_tokens:
            estimate.feed(data)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        st.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        st.header_value += data[start:end]

    def on_header_end() -> None:
        st.headers[st.header_field.decode("latin-1").lower()] = st.header_value.decode(
            "utf-8", "replace"
        )
        st.header_field.clear()
        st.header_value.clear()

    def on_headers_finished() -> None:
        _, disp = parse_options_header(st.headers.get("content-disposition", ""))
        st.name = disp.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = disp.get(b"filename")
        st.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
        st.value.clear()
        if st.name == field:
            if st.file_seen:
                st.error = InvalidRequest("Only one file may be uploaded.", param=field)
            st.file_seen = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if st.name == field:
            st.size += len(chunk)
            if st.size > max_bytes:
                st.error = st.error or TooLarge(
                    f"The file is larger than the limit of {max_bytes} bytes.", param=field
                )
                return
            st.pending += chunk
            # counted on the way through: a batch's size in requests before it is read
            st.newlines += chunk.count(b"\n")
            st.last_byte = chunk[-1:] or st.last_byte
        else:
            st.value += chunk
            if len(st.value) > MAX_FIELD_BYTES:
                st.error = st.error or InvalidRequest(f"Form field {st.name!r} is too long.")

    def on_part_end() -> None:
        if st.name == field:
            st.fields["__filename__"] = st.filename or "upload.jsonl"
        elif st.name:
            st.fields[st.name] = st.value.decode("utf-8", "replace")
        st.headers = {}

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in body:
            parser.write(chunk)
            if st.error is not None:
                raise st.error
            if len(st.pending) >= FLUSH_BYTES:
                data = bytes(st.pending)
                st.pending.clear()
                await asyncio.to_thread(store, data)
        parser.finalize()
        if st.error is not None:
            raise st.error
        if st.pending:
            await asyncio.to_thread(store, bytes(st.pending))
    except BaseException as exc:
        await asyncio.to_thread(writer_cm.__exit__, type(exc), exc, None)
        if isinstance(exc, InferbatchError) or not isinstance(exc, Exception):
            raise  # InvalidRequest, TooLarge, StorageUnavailable; cancellation
        raise InvalidRequest(f"Malformed multipart body: {exc}") from exc
    # completes the blob (the last part of a multipart upload); on failure nothing is kept
    await asyncio.to_thread(writer_cm.__exit__, None, None, None)
    filename = st.fields.pop("__filename__", None)
    if not st.file_seen:
        await asyncio.to_thread(blobs.delete, key)
        return UploadResult(st.fields, None, None, 0, "")
    lines = st.newlines + (1 if st.last_byte not in (b"", b"\n") else 0)
    tokens = await asyncio.to_thread(estimate.total)
    return UploadResult(st.fields, filename, key, writer.size, writer.sha256, lines, tokens)
