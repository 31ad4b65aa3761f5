"""`embedfleet index COLLECTION FILE.jsonl`: stream a JSONL file of documents into a collection, resumably.

Each line is one document, `{"id", "text"|"image"|"video", "payload"?}`, exactly as the gateway's
`PUT /v1/collections/{name}/documents` takes it. Lines are sent in synchronous batches (a batch is
acknowledged only once its documents are embedded and stored), and after every acknowledged batch the
byte offset just past it is written to a sidecar `FILE.jsonl.embedfleet-progress`, so a rerun after
Ctrl-C, a crash or a network failure continues from there. A batch that was sent but not acknowledged
is sent again on the rerun: that is harmless, because point ids derive from (tenant, collection, doc id).

The sidecar is keyed by gateway URL + collection and remembers the file's size and mtime: if the file
changed since, its offsets mean nothing and indexing starts over (again harmless, only slower).
429/503 (and 502/504, connection errors) are retried with exponential backoff, honouring Retry-After.

This module talks HTTP only (httpx, sync); it never imports the gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PROGRESS_SUFFIX = ".embedfleet-progress"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_URL = "http://127.0.0.1:8000"
# the gateway refuses request bodies over max_request_bytes (4 MiB by default): stay well under it
DEFAULT_MAX_BYTES = 3 * 1024 * 1024


class IndexingFailed(Exception):
    """A failure the user must fix (bad line, rejected batch, gateway gone): reported, exit status 1."""


@dataclass(frozen=True)
class Batch:
    docs: list[dict[str, Any]]
    start: int  # byte offset of its first line
    end: int  # byte offset just past its last line: where a rerun continues once it is acknowledged


def progress_path(file: Path) -> Path:
    return file.with_name(file.name + PROGRESS_SUFFIX)


def _fingerprint(file: Path) -> dict[str, int]:
    st = file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class ProgressFile:
    """The sidecar: {"<url> <collection>": {size, mtime_ns, offset, docs, complete, updated_at}}.

    Written atomically (temp file + rename) after each acknowledged batch, so a crash at any point
    leaves either the previous or the new record, never a torn one.
    """

    def __init__(self, file: Path, url: str, collection: str) -> None:
        self.path = progress_path(file)
        self.key = f"{url.rstrip('/')} {collection}"
        self.fingerprint = _fingerprint(file)

    def _all(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def load(self) -> dict[str, Any] | None:
        """This (url, collection)'s record if it is for the file as it is now, else None (start over)."""
        rec = self._all().get(self.key)
        if not isinstance(rec, dict):
            return None
        if any(rec.get(k) != v for k, v in self.fingerprint.items()):
            return None
        return rec

    def save(self, offset: int, docs: int, complete: bool) -> None:
        data = self._all()
        data[self.key] = {
            **self.fingerprint,
            "offset": offset,
            "docs": docs,
            "complete": complete,
            "updated_at": time.time(),
        }
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        with tmp.open("w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def read_batches(file: Path, offset: int, batch: int, max_bytes: int) -> Iterator[Batch]:
    """Batches of at most `batch` documents and about `max_bytes` of JSON, starting at byte `offset`."""
    docs: list[dict[str, Any]] = []
    ids: set[str] = set()
    size = 0
    start = pos = offset
    with file.open("rb") as f:
        f.seek(offset)
        for raw in f:
            line_start, pos = pos, pos + len(raw)
            line = raw.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                raise IndexingFailed(f"{where(file, line_start)}: not JSON ({exc})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
                raise IndexingFailed(f"{where(file, line_start)}: a document is an object with a string 'id'")
            # the gateway refuses an id twice in one request; a repeat starts a new batch, so the later
            # line wins, as it would line by line
            if docs and (len(docs) >= batch or size + len(line) > max_bytes or doc["id"] in ids):
                yield Batch(docs, start, line_start)
                docs, ids, size = [], set(), 0
            if not docs:
                start = line_start
            docs.append(doc)
            ids.add(doc["id"])
            size += len(line)
        if docs:
            yield Batch(docs, start, pos)


def where(file: Path, offset: int) -> str:
    """`file:line` for a byte offset; lines are counted only here, on the error path."""
    with file.open("rb") as f:
        lines = sum(
            chunk.count(b"\n") for chunk in iter(lambda: f.read(min(1 << 20, offset - f.tell())), b"")
        )
    return f"{file}:{lines + 1}"


def _error_text(r: httpx.Response) -> str:
    try:
        err = r.json().get("error", {})
        return f"{r.status_code} {err.get('code')}: {err.get('message')}"
    except (ValueError, AttributeError):
        return f"{r.status_code}: {r.text[:300]}"


class Sender:
    """HTTP with retries: backoff doubles from `backoff` up to 30 s (with jitter) unless Retry-After says."""

    def __init__(
        self,
        client: httpx.Client,
        retries: int,
        headers: dict[str, str] | None = None,
        backoff: float = 0.5,
    ) -> None:
        self.client = client
        self.headers = headers or {}
        self.retries = retries
        self.backoff = backoff
        self.retried = 0

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            try:
                r = self.client.request(method, url, headers=self.headers, **kw)
            except httpx.TransportError as exc:
                if attempt == self.retries:
                    raise IndexingFailed(f"{method} {url}: {exc!r}") from None
                wait = None
            else:
                if r.status_code not in RETRY_STATUSES or attempt == self.retries:
                    return r
                wait = _retry_after(r)
            if wait is None:
                wait = min(30.0, self.backoff * 2**attempt) * random.uniform(0.8, 1.2)
            self.retried += 1
            time.sleep(wait)
        raise AssertionError("unreachable")


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: fall back to our own backoff


def ensure_collection(sender: Sender, base: str, name: str, model: str) -> None:
    """Create the collection; one that already exists is fine if it uses `model`."""
    r = sender.request("POST", f"{base}/v1/collections", json={"name": name, "model": model})
    if r.status_code == 201:
        return
    if r.status_code != 409:
        raise IndexingFailed(f"creating collection {name!r}: {_error_text(r)}")
    r = sender.request("GET", f"{base}/v1/collections/{name}")
    if r.status_code != 200:
        raise IndexingFailed(f"collection {name!r}: {_error_text(r)}")
    if (have := r.json().get("model")) != model:
        raise IndexingFailed(f"collection {name!r} exists with model {have!r}, not {model!r}")


def wait_job(sender: Sender, base: str, job_id: str, poll: float = 0.5) -> None:
    """A batch over the gateway's async threshold comes back as a job: it is acknowledged when it ends."""
    while True:
        r = sender.request("GET", f"{base}/v1/jobs/{job_id}")
        if r.status_code != 200:
            raise IndexingFailed(f"job {job_id}: {_error_text(r)}")
        job = r.json()
        if job["state"] == "succeeded":
            return
        if job["state"] not in ("queued", "running"):
            raise IndexingFailed(f"job {job_id} {job['state']}: {job.get('errors')}")
        time.sleep(poll)


def put_batch(sender: Sender, base: str, name: str, docs: list[dict[str, Any]]) -> None:
    """One acknowledged write; a batch the gateway finds too large (413) is split in halves."""
    r = sender.request("PUT", f"{base}/v1/collections/{name}/documents", json={"documents": docs})
    if r.status_code == 200:
        return
    if r.status_code == 202:
        wait_job(sender, base, r.json()["job_id"])
        return
    if r.status_code == 413 and len(docs) > 1:
        half = len(docs) // 2
        put_batch(sender, base, name, docs[:half])
        put_batch(sender, base, name, docs[half:])
        return
    raise IndexingFailed(_error_text(r))


def _progress_bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),  # bytes of the file: the only total known without a pass over it
        TextColumn("{task.fields[docs]} docs, {task.fields[rate]:.1f} docs/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=disable,
    )


def run_index(
    args: argparse.Namespace, settings: object = None, *, client: httpx.Client | None = None
) -> int:
    """Index `args.file` into `args.collection`; 0 done (or stopped by --max-batches), 1 error, 130 Ctrl-C.

    `settings` is accepted (and unused) so `cli.main` can dispatch to it like its other commands;
    `client` lets a caller supply its own httpx client (transport, proxies, TLS).
    """
    file = Path(args.file)
    if not file.is_file():
        print(f"no such file: {file}", file=sys.stderr)
        return 1
    base = args.url.rstrip("/")
    state = ProgressFile(file, base, args.collection)
    rec = None if args.restart else state.load()
    if rec and rec.get("complete"):
        print(f"{file} already indexed into {args.collection!r} ({rec['docs']} docs); --restart to redo")
        return 0
    offset, done = (int(rec["offset"]), int(rec["docs"])) if rec else (0, 0)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(args.timeout, connect=10.0))
    sender = Sender(http, args.retries, headers)
    sent_batches = 0
    started, start_docs = time.perf_counter(), done
    try:
        if args.create_model:
            ensure_collection(sender, base, args.collection, args.create_model)
        with _progress_bar(args.no_progress) as bar:
            task = bar.add_task(
                f"{args.collection}", total=state.fingerprint["size"], completed=offset, docs=done, rate=0.0
            )
            if offset:
                bar.console.print(f"resuming at byte {offset} ({done} docs already acknowledged)")
            for b in read_batches(file, offset, args.batch, args.max_bytes):
                if args.max_batches is not None and sent_batches >= args.max_batches:
                    bar.console.print(f"stopped after {sent_batches} batches; rerun to continue")
                    return 0
                try:
                    put_batch(sender, base, args.collection, b.docs)
                except IndexingFailed as exc:
                    raise IndexingFailed(f"batch starting at {where(file, b.start)}: {exc}") from None
                sent_batches += 1
                offset, done = b.end, done + len(b.docs)
                state.save(offset, done, complete=False)
                rate = (done - start_docs) / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=offset, docs=done, rate=rate)
        state.save(offset, done, complete=True)
    except IndexingFailed as exc:
        print(f"error: {exc}\nprogress kept at {done} docs in {state.path}; rerun to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: {done} docs acknowledged; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if own:
            http.close()
    elapsed = time.perf_counter() - started
    print(
        f"indexed {done - start_docs} docs into {args.collection!r} in {elapsed:.1f}s "
        f"({(done - start_docs) / max(elapsed, 1e-9):.1f} docs/s, {sender.retried} retries); {done} in total"
    )
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The `index` subcommand on `embedfleet`'s argparse subparsers."""
    p = subparsers.add_parser(
        "index", help="stream a JSONL file of documents into a collection (resumable, with progress)"
    )
    p.add_argument("collection")
    p.add_argument("file", help="JSONL: one {id, text|image|video, payload?} per line")
    p.add_argument("--url", default=os.environ.get("EMBEDFLEET_URL", DEFAULT_URL), help="gateway base URL")
    p.add_argument("--api-key", default=os.environ.get("EMBEDFLEET_API_KEY"), help="or EMBEDFLEET_API_KEY")
    p.add_argument("--batch", type=_positive, default=64, help="documents per request")
    p.add_argument("--max-bytes", type=_positive, default=DEFAULT_MAX_BYTES, help="JSON bytes per request")
    p.add_argument("--create-model", metavar="MODEL", help="create the collection with MODEL if missing")
    p.add_argument("--max-batches", type=_positive, help="stop after this many batches (index in slices)")
    p.add_argument("--retries", type=int, default=8, help="per request, on 429/502/503/504 and I/O errors")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--restart", action="store_true", help="ignore saved progress and start from the top")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (`python -m cli.index ...`), same arguments as `embedfleet index`."""
    parser = argparse.ArgumentParser(prog="embedfleet")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run_index(parser.parse_args(["index", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
