"""A real S3-protocol server for tests: moto's server mode in a process of its own.

``s3_server()`` starts ``python -m moto.server`` on a free port and yields an
:class:`S3Server`: its ``endpoint_url``, ``create_bucket()`` (a fresh bucket, its
``s3://bucket/prefix`` URL and the environment a subprocess needs), a boto3 client for
looking at what was stored, and ``store()`` for an in-process ``S3BlobStore``.

:class:`TcpProxy` sits between clients and the server, so a test can make object storage
go away (``cut``: connections reset, new ones refused) and come back (``restore``) while
the server keeps its in-memory data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx

from inferbatch.blobstore.s3 import S3BlobStore
from inferbatch.engines.local import free_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REGION = "us-east-1"
ACCESS_KEY = "test"
SECRET_KEY = "test"


def aws_env(endpoint_url: str) -> dict[str, str]:
    """The AWS SDK settings of a process that talks to ``endpoint_url``, isolated from the
    machine's own (~/.aws, instance metadata)."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def session() -> boto3.session.Session:
    return boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )


@dataclass(frozen=True)
class S3Bucket:
    name: str
    prefix: str
    url: str
    """``s3://name/prefix``: the value of INFERBATCH_BLOB_URL."""
    env: dict[str, str]
    """INFERBATCH_BLOB_URL and the AWS_* settings, for an inferbatch subprocess."""


class S3Server:
    def __init__(self, endpoint_url: str, proc: subprocess.Popen[bytes]) -> None:
        self.endpoint_url = endpoint_url
        self.proc = proc

    @property
    def env(self) -> dict[str, str]:
        return aws_env(self.endpoint_url)

    def client(self) -> S3Client:
        return session().client("s3", endpoint_url=self.endpoint_url)

    def create_bucket(
        self, prefix: str = "blobs", name: str | None = None, endpoint_url: str | None = None
    ) -> S3Bucket:
        """A new, empty bucket. ``endpoint_url`` (e.g. a :class:`TcpProxy`'s) goes into
        ``env`` instead of the server's own."""
        name = name or f"ib-test-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        url = f"s3://{name}/{prefix}" if prefix else f"s3://{name}"
        env = {**aws_env(endpoint_url or self.endpoint_url), "INFERBATCH_BLOB_URL": url}
        return S3Bucket(name, prefix, url, env)

    def store(
        self, bucket: S3Bucket, endpoint_url: str | None = None, **kwargs: Any
    ) -> S3BlobStore:
        return S3BlobStore(
            bucket.name,
            bucket.prefix,
            endpoint_url=endpoint_url or self.endpoint_url,
            session=session(),
            **kwargs,
        )

    def keys(self, bucket: S3Bucket) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=bucket.name)
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def open_uploads(self, bucket: S3Bucket) -> list[str]:
        """Keys of multipart uploads started and neither completed nor aborted."""
        listed = self.client().list_multipart_uploads(Bucket=bucket.name)
        return sorted(u["Key"] for u in listed.get("Uploads", []))


def _wait_listening(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            httpx.get(url + "/moto-api/", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"moto server at {url} did not answer")


@contextmanager
def s3_server(*, auth: bool = False, log: Path | None = None) -> Iterator[S3Server]:
    """moto's S3 server in a subprocess on a free port, stopped afterwards.

    With ``auth`` the server checks signatures against its own IAM, where no key exists:
    every request is refused as InvalidAccessKeyId (for wrong-credentials tests).
    """
    port = free_port()
    env = {**os.environ, "MOTO_PORT": str(port)}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_listening(url, proc)
        yield S3Server(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut()`` resets every connection and
    refuses new ones until ``restore()``; ``reset()`` only drops the open connections."""

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            _abort(listener)
        self.reset()

    def reset(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _abort(conn)

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _abort(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _abort(client)
                    _abort(upstream)
                    return
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._conns.discard(src)
            self._conns.discard(dst)
        for s in (src, dst):
            _abort(s)


def _abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a crashed server or a dropped network would.
    ``shutdown`` first: it wakes a thread blocked in recv or accept, ``close`` does not."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
