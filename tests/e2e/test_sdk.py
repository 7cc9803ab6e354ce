"""The OpenAI Batch API end to end: real api, scheduler, worker and engine-sim processes,
driven with the official ``openai`` SDK."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from openai.types.responses import Response

from tests.helpers import chat_file, parse_jsonl, tenant_key
from tests.stack import Stack

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def wait_batch(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} still {batch.status}")


def new_user_key(stack: Stack, name: str) -> str:
    """A key of user ``name`` in a project of its own."""
    return tenant_key(stack.env, name)


def test_chat_batch_round_trip_with_the_sdk(stack: Stack) -> None:
    client = stack.client()
    uploaded = client.files.create(file=("in.jsonl", chat_file(200)), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(chat_file(200))
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "e2e"},
    )
    assert batch.status == "validating" and batch.metadata == {"project": "e2e"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (
        done.request_counts.total,
        done.request_counts.completed,
        done.request_counts.failed,
    ) == (200, 200, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.expires_at == done.created_at + 24 * 3600
    assert done.usage is not None and done.usage.output_tokens > 0
    assert done.error_file_id is None and done.output_file_id
    lines = parse_jsonl(client.files.content(done.output_file_id).text)
    assert sorted(r["custom_id"] for r in lines) == sorted(f"req-{i}" for i in range(200))
    first = lines[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion"
    assert "[simulated]" in body["choices"][0]["message"]["content"]
    out_file = client.files.retrieve(done.output_file_id)
    assert out_file.purpose == "batch_output"


@pytest.mark.parametrize(
    ("endpoint", "body", "object_type"),
    [
        (
            "/v1/completions",
            {"model": "m", "prompt": "Once upon", "max_tokens": 3},
            "text_completion",
        ),
        ("/v1/embeddings", {"model": "e", "input": ["a", "b"]}, "list"),
    ],
)
def test_completions_and_embeddings_batches(
    stack: Stack, endpoint: str, body: dict, object_type: str
) -> None:
    client = stack.client()
    content = "\n".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": endpoint, "body": body})
        for i in range(5)
    ).encode()
    f = client.files.create(file=("x.jsonl", content), purpose="batch")
    b = wait_batch(
        client,
        client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="1h").id,
    )  # type: ignore[arg-type]
    assert b.status == "completed" and b.completion_window == "1h"
    lines = parse_jsonl(client.files.content(b.output_file_id or "").text)
    assert len(lines) == 5 and {r["response"]["body"]["object"] for r in lines} == {object_type}


def test_a_responses_batch_writes_response_objects(stack: Stack) -> None:
    # engine-sim serves no /v1/responses: the worker finds out and translates to chat
    client = stack.client()
    bodies = [
        {"model": "sim", "input": f"Question {i}", "instructions": "Be brief."} for i in range(4)
    ]
    bodies.append({"model": "sim", "input": "x", "tools": [{"type": "web_search"}]})
    content = "\n".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": body})
        for i, body in enumerate(bodies)
    ).encode()
    f = client.files.create(file=("r.jsonl", content), purpose="batch")
    b = wait_batch(
        client,
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/responses", completion_window="24h"
        ).id,
    )
    assert b.status == "completed" and b.endpoint == "/v1/responses"
    assert b.request_counts is not None
    assert (b.request_counts.completed, b.request_counts.failed) == (4, 1)
    out = parse_jsonl(client.files.content(b.output_file_id or "").text)
    responses = [Response.model_validate(r["response"]["body"]) for r in out]
    assert all(r.output_text and r.status == "completed" for r in responses)
    assert b.usage is not None
    assert b.usage.input_tokens == sum(r.usage.input_tokens for r in responses if r.usage)
    (refused,) = parse_jsonl(client.files.content(b.error_file_id or "").text)
    assert refused["custom_id"] == "r4" and refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"] == "tools[0]"
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/images/generations",  # type: ignore[arg-type]
            completion_window="24h",
        )
    assert exc.value.body["param"] == "endpoint"  # type: ignore[index]


def test_invalid_file_fails_the_batch_with_line_numbers(stack: Stack) -> None:
    client = stack.client()
    content = (
        chat_file(3)
        + b'{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", '
        + b'"body": {"model": "m"}}\n'
    )
    f = client.files.create(file=("bad.jsonl", content), purpose="batch")
    b = wait_batch(
        client,
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id,
    )
    assert b.status == "failed" and b.failed_at
    assert b.errors is not None and b.errors.data is not None
    assert [(e.code, e.line) for e in b.errors.data] == [("invalid_method", 4)]


def test_files_of_other_purposes_are_stored_but_feed_no_batch(stack: Stack) -> None:
    client = stack.client()
    data = client.files.create(file=("notes.txt", b"any bytes"), purpose="user_data")
    kept = client.files.create(
        file=("in.jsonl", chat_file(1)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert data.purpose == "user_data" and data.bytes == 9
    assert kept.expires_at == kept.created_at + 7200
    assert [f.id for f in client.files.list(purpose="user_data")] == [data.id]
    assert client.files.content(data.id).content == b"any bytes"
    with pytest.raises(openai.BadRequestError) as exc:
        client.batches.create(
            input_file_id=data.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert exc.value.body["param"] == "input_file_id"  # type: ignore[index]


def test_an_upload_with_validate_is_refused_when_a_line_is_bad(stack: Stack) -> None:
    client = stack.client()
    bad = chat_file(3) + b'{"custom_id": "req-1", "method": "POST"}\n'
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(
            file=("bad.jsonl", bad), purpose="batch", extra_query={"validate": "true"}
        )
    error = exc.value.body
    assert error["code"] == "invalid_url" and error["param"] == "file.line[4]"  # type: ignore[index]
    assert "line 4" in error["message"]  # type: ignore[index]
    assert list(client.files.list()) == []  # nothing kept
    ok = client.files.create(
        file=("ok.jsonl", chat_file(3)), purpose="batch", extra_query={"validate": "true"}
    )
    assert client.files.content(ok.id).content == chat_file(3)
    # without validate the same bad file is stored, and the batch fails at ingest
    assert client.files.create(file=("bad.jsonl", bad), purpose="batch").bytes == len(bad)


def test_files_list_retrieve_delete(stack: Stack) -> None:
    client = stack.client()
    ids = [
        client.files.create(file=(f"f{i}.jsonl", chat_file(1)), purpose="batch").id
        for i in range(3)
    ]
    listed = [f.id for f in client.files.list()]
    assert listed[:3] == ids[::-1]
    assert client.files.retrieve(ids[0]).filename == "f0.jsonl"
    assert client.files.wait_for_processing(ids[1], poll_interval=0.1).status == "processed"
    assert client.files.retrieve_content(ids[1]) == chat_file(1).decode()  # deprecated, kept
    asc = [f.id for f in client.files.list(order="asc", limit=2).data]
    assert asc == ids[:2]
    deleted = client.files.delete(ids[0])
    assert deleted.deleted and deleted.id == ids[0]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(ids[0])
    with pytest.raises(openai.NotFoundError):
        client.files.content(ids[0])


def test_batches_list_paginates_with_after_and_limit(stack: Stack) -> None:
    client = stack.client()
    f = client.files.create(file=("in.jsonl", chat_file(1)), purpose="batch")
    created = [
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    page2 = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in page2.data] == created[::-1][2:4]
    assert [b.id for b in client.batches.list(limit=2)] == created[::-1]  # auto-paginates


def test_batches_list_filters_by_priority_with_pagination(stack: Stack) -> None:
    client = stack.client()
    f = client.files.create(file=("in.jsonl", chat_file(1)), purpose="batch")
    created: dict[str, list[str]] = {"1": [], "5": [], "10": []}
    for priority in ("10", "1", "10", "5", "10", "1"):
        created[priority].append(
            client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"priority": priority},
            ).id
        )
    default = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    high = created["10"][::-1]
    page = client.batches.list(limit=2, extra_query={"priority": 10})
    assert [b.id for b in page.data] == high[:2] and page.has_more
    assert {b.metadata["priority"] for b in page.data if b.metadata} == {"10"}
    page2 = client.batches.list(limit=2, after=page.data[-1].id, extra_query={"priority": 10})
    assert [b.id for b in page2.data] == high[2:] and not page2.has_more
    assert [b.id for b in client.batches.list(limit=1, extra_query={"priority": 10})] == high
    normal = [b.id for b in client.batches.list(extra_query={"priority": "1"})]
    assert normal == [default.id, *created["1"][::-1]]  # no metadata.priority means 1
    assert [b.id for b in client.batches.list(extra_query={"priority": 7})] == []
    assert len(list(client.batches.list())) == 7
    for bad in ("high", "0", "-1", "1.5", "", "10000001"):
        with pytest.raises(openai.BadRequestError) as exc:
            client.batches.list(extra_query={"priority": bad})
        error = exc.value.body
        assert isinstance(error, dict) and error["param"] == "priority"
        assert error["type"] == "invalid_request_error" and error["message"]
    r = httpx.get(
        stack.url + "/v1/batches",
        params={"priority": "urgent"},
        headers={"authorization": f"Bearer {client.api_key}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "priority"


def test_cancel_a_running_batch(db_url: str, tmp_path) -> None:
    # a slow engine keeps the batch in progress long enough to cancel it
    s = Stack(db_url, tmp_path, sim_args=("--base-latency-s", "0.5", "--max-concurrency", "2"))
    s.start(dedicated=0)
    try:
        client = s.client()
        f = client.files.create(file=("in.jsonl", chat_file(100)), purpose="batch")
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while client.batches.retrieve(b.id).status != "in_progress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        cancelling = client.batches.cancel(b.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = wait_batch(client, b.id)
        assert done.status == "cancelled" and done.cancelled_at
        out = (
            parse_jsonl(client.files.content(done.output_file_id).text)
            if done.output_file_id
            else []
        )
        err = parse_jsonl(client.files.content(done.error_file_id or "").text)
        ids = [r["custom_id"] for r in out + err]
        assert sorted(ids) == sorted(f"req-{i}" for i in range(100))
        assert {r["error"]["code"] for r in err} == {"batch_cancelled"}
        assert done.request_counts is not None
        assert done.request_counts.completed == len(out) and done.request_counts.failed == len(err)
        failed = wait_batch(
            client,
            client.batches.create(
                input_file_id=client.files.create(file=("bad.jsonl", b"\n"), purpose="batch").id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ).id,
        )
        # a state conflict is not retried by the SDK, even with its retries on
        sent: list[httpx.Request] = []
        retrying = openai.OpenAI(
            base_url=s.url + "/v1",
            api_key=client.api_key,
            max_retries=2,
            http_client=httpx.Client(event_hooks={"request": [sent.append]}),
        )
        with pytest.raises(openai.ConflictError) as conflict:
            retrying.batches.cancel(failed.id)
        assert conflict.value.response.headers["x-should-retry"] == "false"
        assert len(sent) == 1
    finally:
        s.close()


def test_auth_and_isolation_between_users(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        stack.client("wrong-key").files.list()
    r = httpx.get(stack.url + "/v1/batches")
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    alice, bob = (
        stack.client(new_user_key(stack, "alice")),
        stack.client(new_user_key(stack, "bob")),
    )
    f = alice.files.create(file=("in.jsonl", chat_file(2)), purpose="batch")
    b = alice.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        lambda: bob.files.retrieve(f.id),
        lambda: bob.files.content(f.id),
        lambda: bob.files.delete(f.id),
        lambda: bob.batches.retrieve(b.id),
        lambda: bob.batches.cancel(b.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError):
        bob.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert [x.id for x in bob.batches.list()] == []
    assert [x.id for x in bob.files.list()] == []
    assert b.id in [x.id for x in stack.client().batches.list()]  # the admin sees all


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, "input_file_id"),
        ({"endpoint": "/v1/images", "completion_window": "24h"}, "endpoint"),
        ({"endpoint": "/v1/chat/completions", "completion_window": "soon"}, "completion_window"),
        ({"endpoint": "/v1/chat/completions", "completion_window": "90d"}, "completion_window"),
        (
            {
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {f"k{i}": "v" for i in range(17)},
            },
            "metadata",
        ),
        (
            {
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"k" * 65: "v"},
            },
            "metadata",
        ),
        (
            {
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"k": "v" * 513},
            },
            "metadata",
        ),
        (
            {
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": {"priority": "high"},
            },
            "metadata.priority",
        ),
    ],
)
def test_bad_create_requests_get_openai_errors(stack: Stack, payload: dict, param: str) -> None:
    client = stack.client()
    f = client.files.create(file=("in.jsonl", chat_file(1)), purpose="batch")
    body = {"input_file_id": f.id, **payload} if param != "input_file_id" else payload
    r = httpx.post(
        stack.url + "/v1/batches", json=body, headers={"authorization": f"Bearer {client.api_key}"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


def test_upload_errors(stack: Stack) -> None:
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as exc:
        client.files.create(file=("in.jsonl", b"{}"), purpose="nonsense")  # type: ignore[arg-type]
    assert exc.value.body["param"] == "purpose"  # type: ignore[index]
    for expires_after, param in [
        ({"anchor": "created_at", "seconds": -5}, "expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 31 * 86400}, "expires_after.seconds"),
        ({"anchor": "last_active_at", "seconds": 7200}, "expires_after.anchor"),
    ]:
        with pytest.raises(openai.BadRequestError) as exc:
            client.files.create(
                file=("in.jsonl", chat_file(1)),
                purpose="batch",
                expires_after=expires_after,  # type: ignore[arg-type]
            )
        assert exc.value.body["param"] == param  # type: ignore[index]
    assert list(client.files.list()) == []  # nothing kept of a refused upload
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    r = httpx.post(
        stack.url + "/v1/batches",
        content=b"{not json",
        headers={"authorization": f"Bearer {client.api_key}"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_upload_over_the_size_limit_is_refused_while_streaming(db_url: str, tmp_path) -> None:
    s = Stack(db_url, tmp_path, env={"INFERBATCH_MAX_FILE_BYTES": "100000"}).start()
    try:
        client = s.client()

        def body():  # no content-length: the limit must hold while streaming
            for _ in range(100):
                yield b"x" * 10_000

        boundary = "b0undary"

        def multipart():
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
                f'batch\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="big.jsonl"\r\n\r\n'
            ).encode()
            yield from body()
            yield f"\r\n--{boundary}--\r\n".encode()

        r = httpx.post(
            s.url + "/v1/files",
            content=multipart(),
            headers={
                "authorization": f"Bearer {client.api_key}",
                "content-type": f"multipart/form-data; boundary={boundary}",
            },
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
        with pytest.raises(openai.APIStatusError) as exc:
            client.files.create(file=("big.jsonl", b"x" * 200_000), purpose="batch")
        assert exc.value.status_code == 413
        assert list(client.files.list()) == []
        assert not any((tmp_path / "blobs").rglob("*.tmp-*"))
        ok = client.files.create(file=("small.jsonl", chat_file(2)), purpose="batch")
        assert client.files.content(ok.id).content == chat_file(2)
    finally:
        s.close()


def test_models_health_readiness_and_metrics(stack: Stack) -> None:
    models = stack.client().models.list()
    assert [m.id for m in models.data] == ["sim"]
    assert httpx.get(stack.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(stack.url + "/readyz").status_code == 200
    text = httpx.get(stack.url + "/metrics").text
    for name in (
        "inferbatch_batches{",
        "inferbatch_queue_depth{",
        "inferbatch_workers{",
        "inferbatch_ingested_requests",
    ):
        assert name in text
    assert 'inferbatch_workers{pool="spot",state="running"} 1.0' in text
