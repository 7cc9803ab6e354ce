"""A Message Batch create body at the size limit, with flat memory: peak RSS against a
tenth of it.

Writes a create body of ``--requests`` Anthropic requests (``--kb`` of text each; by
default 100,000 of ~2.5 KB, about 256 MB: the default limits), and a reference body of a
tenth as many, each to a file. For each, a fresh Python process runs what
``POST /v1/messages/batches`` runs on the body once it has arrived (spooled to a file):
the streaming parse, every request's validation and the writing of the batch's input
lines to a local blob store. It prints each one's time and peak RSS (``ru_maxrss``, which
includes the interpreter and its imports) and the ratio of the large body's peak RSS over
the reference's (goal <= 1.5: one request is in memory at a time, never the body).

Usage: python -m bench.message_batch [--requests 100000] [--kb 2.5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys, time
from pathlib import Path
from inferbatch.blobstore import LocalBlobStore
from inferbatch.services.message_batches import write_input
start = time.perf_counter()
with open(sys.argv[1], "rb") as body:
    count, size, _ = write_input(body, LocalBlobStore(Path(sys.argv[2])), "upload/x", 10**7)
took = time.perf_counter() - start
print(count, size, took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_body(path: Path, n: int, text_bytes: int) -> int:
    filler = "lorem ipsum " * (text_bytes // 12 + 1)
    with path.open("w") as f:
        f.write('{"requests": [')
        for i in range(n):
            request = {
                "custom_id": f"req-{i}",
                "params": {
                    "model": "m",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{i} {filler[:text_bytes]}"}],
                },
            }
            f.write(("," if i else "") + json.dumps(request))
        f.write("]}")
    return path.stat().st_size


def measure(body: Path, blobs: Path) -> tuple[int, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(body), str(blobs)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return int(out[0]), float(out[2]), int(out[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--kb", type=float, default=2.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ib-msgbatch-") as tmp:
        root = Path(tmp)
        rows = []
        for n in (args.requests // 10, args.requests):
            body = root / f"body-{n}.json"
            size = write_body(body, n, int(args.kb * 1024))
            count, took, rss_kib = measure(body, root / f"blobs-{n}")
            assert count == n
            rows.append((n, size, took, rss_kib))
            body.unlink()
            print(
                f"{n:>9,} requests  {size / 1e6:8.1f} MB body  {took:6.2f} s  "
                f"{size / 1e6 / took:6.1f} MB/s  peak RSS {rss_kib / 1024:7.1f} MiB"
            )
        (small, small_size, small_took, small_rss), (large, size, took, rss) = rows
        ratio = rss / small_rss
        verdict = "PASS" if ratio <= 1.5 else "FAIL"
        print(f"peak RSS, {large:,} over {small:,} requests: {ratio:.2f} ({verdict}, goal <= 1.5)")
        print(f"time per MB, over the reference: {(took / size) / (small_took / small_size):.2f}")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"({time.perf_counter() - start:.0f} s)")
