"""The Batch API end to end with file contents in object storage: real api, scheduler,
worker and engine-sim processes configured with INFERBATCH_BLOB_URL pointing at an
S3-protocol server (moto, its own process), driven with the official ``openai`` SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_sdk import wait_batch
from tests.helpers import chat_file, chat_line, parse_jsonl
from tests.s3server import S3Bucket, S3Server, s3_server
from tests.stack import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> S3Bucket:
    return s3.create_bucket(prefix="inferbatch/files")


@pytest.fixture
def s3_stack(db_url: str, tmp_path: Path, bucket: S3Bucket) -> Iterator[Stack]:
    s = Stack(db_url, tmp_path, env=bucket.env).start()
    try:
        yield s
    finally:
        s.close()


def test_a_batch_round_trips_with_its_files_in_object_storage(
    s3_stack: Stack, s3: S3Server, bucket: S3Bucket, tmp_path: Path
) -> None:
    client = s3_stack.client()
    content = chat_file(300)
    uploaded = client.files.create(file=("in.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content)
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (300, 300)
    assert done.output_file_id and done.error_file_id is None
    lines = parse_jsonl(client.files.content(done.output_file_id).text)
    assert sorted(r["custom_id"] for r in lines) == sorted(f"req-{i}" for i in range(300))
    assert all(r["response"]["status_code"] == 200 for r in lines)
    assert client.files.content(uploaded.id).content == content

    # both files are objects under the prefix; nothing went to the local directory
    keys = s3.keys(bucket)
    assert len(keys) == 2 and all(k.startswith("inferbatch/files/") for k in keys)
    assert not (tmp_path / "blobs").exists()
    ready = httpx.get(s3_stack.url + "/readyz").json()
    assert ready == {"status": "ok", "database": "ok", "storage": "ok"}

    client.files.delete(uploaded.id)
    assert len(s3.keys(bucket)) == 1
    assert s3.open_uploads(bucket) == []


def test_a_file_of_several_parts_uploads_and_downloads_whole(
    s3_stack: Stack, s3: S3Server, bucket: S3Bucket
) -> None:
    # ~20 MB: three 8 MiB parts on the way in, streamed on the way out
    line = chat_line("x", text="y" * 20_000)
    content = "\n".join(
        json.dumps({**json.loads(line), "custom_id": f"big-{i}"}) for i in range(1000)
    ).encode()
    client = s3_stack.client()
    uploaded = client.files.create(file=("big.jsonl", content), purpose="batch")
    assert uploaded.bytes == len(content)
    (key,) = s3.keys(bucket)
    head = s3.client().head_object(Bucket=bucket.name, Key=key)
    assert head["ContentLength"] == len(content)
    assert head["ETag"].strip('"').endswith("-3")
    assert client.files.content(uploaded.id).content == content
