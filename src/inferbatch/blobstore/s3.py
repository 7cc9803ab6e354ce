"""``S3BlobStore``: blobs as objects in an S3-compatible bucket.

Chosen with ``INFERBATCH_BLOB_URL=s3://bucket/prefix``; works with AWS S3, MinIO,
Cloudflare R2, Ceph RGW and Google Cloud Storage's interoperability (XML) API. Endpoint,
region and credentials are the AWS SDK's standard settings: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``), ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, or the platform's workload identity (EKS IRSA
and Pod Identity, instance roles). The SDK reads them itself.

The library is boto3 (botocore): AWS's own SDK, released every week, with the credential
chain and retry modes operators already know, and the most widely tested client against
other S3 implementations. It is blocking, which is what :class:`BlobStore` promises:
every async caller runs store methods in a thread, and a botocore client is
thread-safe, so one client serves every thread. (aiobotocore would pin botocore to the
versions it patches; obstore is fast but its credential chain is its own.)

- Writes stream as a multipart upload of ``part_size`` parts (8 MiB); a blob smaller than
  one part is a single PutObject. An exception inside the writer, or a failed
  completion, aborts the upload, so a blob is whole or absent: S3 makes an object
  visible only when PutObject or CompleteMultipartUpload succeeds. (An abort that itself
  fails leaves parts that no reader sees; a bucket lifecycle rule that aborts incomplete
  multipart uploads after a day removes them.)
- Reads stream the GetObject body through a buffered reader (``read(n)``, ``readline()``,
  iteration). A connection lost mid-read is resumed where it stopped with a ranged GET
  pinned to the object's ETag.
- ``compose`` (an Upload's parts into its file) is one multipart upload whose parts are,
  wherever S3 allows, server-side copies of the sources (UploadPartCopy, pinned to the
  ETag that was read): every part but the last must be at least 5 MiB, so a source of
  5 MiB or more is copied, and smaller ones are streamed through (read and written, in
  buffered parts), as are the first bytes of a large source that follows small ones,
  until the pending part reaches 5 MiB. The sha256 (and md5) of the result are computed
  from the sources' bytes read in order: the copied ones are read too, but only read
  (a GET), never uploaded again, and never held whole. Neither digest can be had from
  S3 itself (a multipart ETag is a hash of part hashes) or from the parts' own digests.
- Failures are wrapped once, here: a missing key is ``FileNotFoundError``; anything else
  (endpoint unreachable, bucket missing, credentials refused, server errors after the
  SDK's retries) is :class:`StorageUnavailable` with a reason a person can act on.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, BinaryIO

import boto3
import urllib3.exceptions
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
)
from botocore.response import StreamingBody

from inferbatch.blobstore.compose import CHUNK, Composed, Digests
from inferbatch.errors import StorageUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
"""Bytes per multipart part (S3 wants at least 5 MiB for every part but the last)."""

MIN_PART = 5 * 1024 * 1024
"""S3's smallest part (all but the last part of a multipart upload)."""
MAX_COPY_PART = 5 * 1024**3
"""S3's largest part, copied or not."""

READ_BUFFER = 1 << 20
READ_RETRIES = 3

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
    "AuthorizationHeaderMalformed",
}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
# a lost connection while a body streams (botocore wraps some of urllib3's, not all)
_STREAM_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)

_CLIENT_CONFIG = Config(
    connect_timeout=5,
    read_timeout=60,
    retries={"mode": "standard", "max_attempts": 4},
    max_pool_connections=32,
    # checksums only where S3 requires them: several S3-compatible servers (GCS, older
    # MinIO and Ceph) refuse the newer default trailing checksums; sha256 is ours anyway
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    user_agent_extra="inferbatch",
)
# /readyz and start-up: one quick try, so a dead endpoint answers within a probe timeout
_PROBE_CONFIG = _CLIENT_CONFIG.merge(
    Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 1})
)


def _error_code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status or "")


class S3BlobStore:
    """Blobs under ``prefix`` in ``bucket``; see the module docstring."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        part_size: int = PART_SIZE,
        session: boto3.session.Session | None = None,
    ) -> None:
        """``endpoint_url`` and ``session`` (credentials) default to the AWS SDK's own
        settings; ``region`` to AWS_DEFAULT_REGION or the profile's."""
        if part_size < 5 * 1024 * 1024:
            raise ValueError("part_size must be at least 5 MiB (S3's smallest part)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        session = session or boto3.session.Session()
        # one client for the work, thread-safe; one that tries once, for check()
        self.client: S3Client = session.client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=_CLIENT_CONFIG
        )
        self._probe: S3Client = session.client(
            "s3", region_name=region, endpoint_url=endpoint_url, config=_PROBE_CONFIG
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r})"

    def object_key(self, key: str) -> str:
        if ".." in key.split("/") or key.startswith("/") or not key:
            raise ValueError(f"invalid blob key {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def unavailable(self, exc: Exception, action: str) -> StorageUnavailable:
        """The StorageUnavailable for an SDK error, with a reason a person can act on."""
        where = f"{self.url} at {self.client.meta.endpoint_url}"
        if isinstance(exc, StorageUnavailable):
            return exc
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message") or ""
            if code == "NoSuchBucket":
                return StorageUnavailable(f"bucket {self.bucket!r} does not exist ({where})")
            if code in _CREDENTIAL_CODES:
                return StorageUnavailable(
                    f"the credentials were refused ({code}) by {where}: check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the "
                    "workload identity, and AWS_REGION"
                )
            if code in ("AccessDenied", "403", "AllAccessDisabled"):
                return StorageUnavailable(
                    f"access denied ({code}) to {where} on {action}: the credentials need "
                    "s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and "
                    "s3:AbortMultipartUpload on the bucket"
                )
            return StorageUnavailable(f"{action} on {where} failed: {code} {message}".strip())
        if isinstance(exc, NoCredentialsError):
            return StorageUnavailable(
                f"no credentials for {where}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or a workload identity"
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
            return StorageUnavailable(f"cannot reach {where}: {exc}")
        return StorageUnavailable(f"{action} on {where} failed: {exc}")

    # -- the BlobStore interface ---------------------------------------------------------

    def open_writer(self, key: str) -> S3Writer:
        """A writer that makes no request until a part is full or it exits."""
        return S3Writer(self, self.object_key(key))

    def open_reader(self, key: str) -> BinaryIO:
        return self._open(key)[0]

    def _open(self, key: str) -> tuple[BinaryIO, int, str | None]:
        """A reader of ``key``, its size and its ETag."""
        name = self.object_key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                raise FileNotFoundError(f"no blob {key!r} in {self.url}") from exc
            raise self.unavailable(exc, "GetObject") from exc
        except BotoCoreError as exc:
            raise self.unavailable(exc, "GetObject") from exc
        etag = response.get("ETag")
        raw = _ObjectStream(self, name, response["Body"], etag)
        return io.BufferedReader(raw, buffer_size=READ_BUFFER), response["ContentLength"], etag

    def iter_chunks(self, key: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        with self.open_reader(key) as f:
            while chunk := f.read(chunk_size):
                yield chunk

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self.unavailable(exc, "DeleteObject") from exc

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                return False
            raise self.unavailable(exc, "HeadObject") from exc
        except BotoCoreError as exc:
            raise self.unavailable(exc, "HeadObject") from exc
        return True

    def compose(self, key: str, sources: Sequence[str], *, md5: bool = False) -> Composed:
        """One multipart upload of the sources, copied server-side where S3 allows it
        (see the module docstring); nothing is left at ``key`` on failure."""
        digests = Digests(md5=md5)
        with self.open_writer(key) as writer:
            for source in sources:
                self._compose_one(writer, source, digests)
        return digests.result()

    def _compose_one(self, writer: S3Writer, source: str, digests: Digests) -> None:
        reader, size, etag = self._open(source)
        with reader:
            done = 0
            if size >= MIN_PART and 0 < writer.pending < MIN_PART:
                # S3 parts but the last are >= 5 MiB: top up the pending one from here
                done += _pump(reader, MIN_PART - writer.pending, digests, writer)
            copy = size - done >= MIN_PART and (writer.pending == 0 or writer.pending >= MIN_PART)
            if copy:
                writer.copy(self.object_key(source), done, size, etag)
            done += _pump(reader, size - done, digests, None if copy else writer)
        if done != size:
            raise StorageUnavailable(f"{source!r} in {self.url} ended at {done} of {size} bytes")

    def check(self) -> None:
        """One ListObjectsV2 of at most one key: proves the endpoint answers, the bucket
        exists and the credentials may list it (which S3 needs to answer 404, not 403,
        for a missing key)."""
        try:
            self._probe.list_objects_v2(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "", MaxKeys=1
            )
        except (ClientError, BotoCoreError) as exc:
            raise self.unavailable(exc, "ListObjectsV2") from exc


class S3Writer:
    """Buffers at most one part; uploads full parts as they fill (see the module doc)."""

    def __init__(self, store: S3BlobStore, name: str) -> None:
        self._store = store
        self._name = name
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._hash = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    @property
    def pending(self) -> int:
        """Bytes written and not yet sent as a part."""
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) >= self._store.part_size:
            self._upload_part(self._store.part_size)

    def copy(self, source_name: str, start: int, end: int, etag: str | None) -> None:
        """Append bytes ``start`` to ``end`` of object ``source_name`` as parts copied
        server-side (UploadPartCopy, only from the object with ``etag``): they never pass
        through here, so ``sha256`` then covers the written bytes only. The pending bytes
        go first as a part of their own: the caller makes them 0 or at least 5 MiB, and
        ``end - start`` at least 5 MiB unless nothing follows."""
        if self._buffer:
            self._upload_part(len(self._buffer))
        s = self._store
        length = end - start
        pieces = max(1, -(-length // MAX_COPY_PART))
        step = -(-length // pieces)
        try:
            upload_id = self._ensure_upload()
            for lo in range(start, end, step):
                hi = min(end, lo + step)
                number = len(self._parts) + 1
                part = s.client.upload_part_copy(
                    Bucket=s.bucket,
                    Key=self._name,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": s.bucket, "Key": source_name},
                    CopySourceRange=f"bytes={lo}-{hi - 1}",
                    CopySourceIfMatch=etag or "*",
                )
                self._parts.append({"ETag": part["CopyPartResult"]["ETag"], "PartNumber": number})
        except (ClientError, BotoCoreError) as exc:
            raise s.unavailable(exc, "UploadPartCopy") from exc
        self._size += length

    def _ensure_upload(self) -> str:
        if self._upload_id is None:
            s = self._store
            created = s.client.create_multipart_upload(Bucket=s.bucket, Key=self._name)
            self._upload_id = created["UploadId"]
        return self._upload_id

    def _upload_part(self, n: int) -> None:
        s = self._store
        try:
            upload_id = self._ensure_upload()
            with memoryview(self._buffer) as view:
                body = bytes(view[:n])
            number = len(self._parts) + 1
            part = s.client.upload_part(
                Bucket=s.bucket,
                Key=self._name,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
            )
        except (ClientError, BotoCoreError) as exc:
            raise s.unavailable(exc, "UploadPart") from exc
        del self._buffer[:n]
        self._parts.append({"ETag": part["ETag"], "PartNumber": number})

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._abort()
            return
        s = self._store
        action = "PutObject" if self._upload_id is None else "CompleteMultipartUpload"
        try:
            if self._upload_id is None:
                s.client.put_object(Bucket=s.bucket, Key=self._name, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._upload_part(len(self._buffer))
                s.client.complete_multipart_upload(
                    Bucket=s.bucket,
                    Key=self._name,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except (ClientError, BotoCoreError, StorageUnavailable) as error:
            self._abort()
            raise s.unavailable(error, action) from error
        finally:
            self._buffer = bytearray()

    def _abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        s = self._store
        try:
            s.client.abort_multipart_upload(
                Bucket=s.bucket, Key=self._name, UploadId=self._upload_id
            )
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "could not abort the multipart upload of %s in %s (%s); its parts stay "
                "invisible until a lifecycle rule removes them",
                self._name,
                s.url,
                s.unavailable(exc, "AbortMultipartUpload").reason,
            )
        self._upload_id = None


def _pump(reader: BinaryIO, n: int, digests: Digests, writer: S3Writer | None) -> int:
    """Read up to ``n`` bytes of ``reader`` into ``digests`` (and ``writer`` unless None),
    a chunk at a time; returns how many there were."""
    done = 0
    while done < n and (chunk := reader.read(min(CHUNK, n - done))):
        digests.update(chunk)
        if writer is not None:
            writer.write(chunk)
        done += len(chunk)
    return done


class _ObjectStream(io.RawIOBase):
    """The raw bytes of one object: the GetObject body, resumed with a ranged GET (same
    ETag) when the connection is lost mid-read."""

    def __init__(
        self, store: S3BlobStore, name: str, body: StreamingBody, etag: str | None
    ) -> None:
        super().__init__()
        self._store = store
        self._name = name
        self._body = body
        self._etag = etag
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._eof:
            return 0
        view = memoryview(buffer).cast("B")
        failures = 0
        while True:
            try:
                data = self._body.read(len(view))
                break
            except _STREAM_ERRORS as exc:
                failures += 1
                if failures > READ_RETRIES:
                    raise self._store.unavailable(exc, "GetObject (reading)") from exc
                log.info("reading %s: %s; resuming at byte %d", self._name, exc, self._pos)
                self._resume()
                if self._eof:
                    return 0
        if not data:
            self._eof = True
            return 0
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def _resume(self) -> None:
        s = self._store
        self._close_body()
        try:
            # IfMatch: the bytes that follow are of the same object (a replaced one
            # answers 412 rather than splicing two objects together)
            response = s.client.get_object(
                Bucket=s.bucket,
                Key=self._name,
                Range=f"bytes={self._pos}-",
                IfMatch=self._etag or "*",
            )
        except ClientError as exc:
            if _error_code(exc) == "InvalidRange":  # the lost bytes were the last ones
                self._eof = True
                return
            raise s.unavailable(exc, "GetObject (resuming)") from exc
        except BotoCoreError as exc:
            raise s.unavailable(exc, "GetObject (resuming)") from exc
        self._body = response["Body"]

    def _close_body(self) -> None:
        with contextlib.suppress(*_STREAM_ERRORS):
            self._body.close()

    def close(self) -> None:
        if not self.closed:
            self._close_body()
        super().close()
