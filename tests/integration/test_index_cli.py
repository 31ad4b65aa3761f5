"""`embedfleet index`: a real JSONL of stdlib docstrings through the real gateway, interrupted and resumed.

The interruption is `--max-batches` (the user-facing "index in slices" option), and the crash case —
a batch sent but never acknowledged — is simulated by rolling the progress file back, which must only
re-send, never duplicate. Retry/Retry-After handling is checked against an in-process mock transport.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import pytest

from cli.index import ProgressFile, add_parser, progress_path, run_index
from tests.corpus import Doc, stdlib_docs
from tests.integration.conftest import Gateway

pytestmark = pytest.mark.integration
N_DOCS = 300
BATCH = 64


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["index", *argv, "--no-progress"])


def points(gw: Gateway, name: str) -> int:
    r = httpx.get(f"{gw.base_url}/v1/collections/{name}", timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["points_count"])


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("index") / "stdlib.jsonl"
    unique: dict[str, Doc] = {}
    for d in stdlib_docs():
        unique.setdefault(d.id, d)  # ids repeat (same-named methods of one module): keep the first
    with path.open("w") as f:
        for d in list(unique.values())[:N_DOCS]:
            # first sentences, not whole docstrings: short inputs keep the test fast on a 2-core CPU
            f.write(json.dumps({"id": d.id, "text": d.title, "payload": {"title": d.title}}) + "\n")
    return path


def unexpected(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no request expected, got {request.method} {request.url}")


def test_index_interrupt_and_resume_exactly_once(gateway: Gateway, jsonl: Path) -> None:
    name = "index-cli"
    common = (name, str(jsonl), "--url", gateway.base_url, "--batch", str(BATCH))

    assert run_index(parse(*common, "--create-model", "all-minilm-l6-v2", "--max-batches", "2")) == 0
    state = ProgressFile(jsonl, gateway.base_url, name)
    rec = state.load()
    assert rec is not None and not rec["complete"] and rec["docs"] == 2 * BATCH
    assert 0 < rec["offset"] < jsonl.stat().st_size
    assert points(gateway, name) == 2 * BATCH

    # a crash after sending batch 3 but before recording it: the rerun sends it again
    assert run_index(parse(*common, "--max-batches", "1")) == 0
    rolled_back = json.loads(progress_path(jsonl).read_text())
    rolled_back[state.key].update(offset=rec["offset"], docs=rec["docs"])
    progress_path(jsonl).write_text(json.dumps(rolled_back))

    assert run_index(parse(*common)) == 0
    rec = state.load()
    assert rec is not None and rec["complete"] and rec["docs"] == N_DOCS
    assert rec["offset"] == jsonl.stat().st_size
    assert points(gateway, name) == N_DOCS

    # complete: a rerun sends nothing; --restart re-sends everything and still changes nothing
    assert run_index(parse(*common), client=httpx.Client(transport=httpx.MockTransport(unexpected))) == 0
    assert run_index(parse(*common, "--restart", "--batch", "128")) == 0
    assert points(gateway, name) == N_DOCS
    r = httpx.post(
        f"{gateway.base_url}/v1/collections/{name}/search",
        json={"query": {"text": "compute the greatest common divisor"}, "top_k": 3},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    hit = r.json()["results"]
    assert len(hit) == 3 and all("title" in h["payload"] for h in hit)


def test_bad_line_and_rejected_batch_keep_progress(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "text": "first"}\n{"id": "b", "text": "second", "oops": 1}\n')
    argv = ("index-cli-bad", str(path), "--url", gateway.base_url, "--batch", "1")
    assert run_index(parse(*argv, "--create-model", "all-minilm-l6-v2")) == 1  # 400 on line 2's field
    rec = ProgressFile(path, gateway.base_url, "index-cli-bad").load()
    assert rec is not None and rec["docs"] == 1 and not rec["complete"]
    path.write_text('{"id": "a", "text": "first"}\nnot json\n')  # a changed file starts over
    assert run_index(parse(*argv)) == 1
    assert points(gateway, "index-cli-bad") == 1


def test_retries_honour_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": f"doc {i}"}) + "\n" for i in range(5)))
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(len(json.loads(request.content)["documents"]))
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"code": "busy"}})
        if len(calls) == 2:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"upserted": calls[-1]})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    args = parse("c", str(path), "--url", "http://127.0.0.1:1", "--batch", "2")
    assert run_index(args, client=client) == 0
    assert calls == [2, 2, 2, 2, 1]  # the first batch three times, then the other two once each


def test_ctrl_c_keeps_acknowledged_batches(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": f"doc {i}"}) + "\n" for i in range(6)))
    sent: list[list[str]] = []
    interrupted: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        ids = [d["id"] for d in json.loads(request.content)["documents"]]
        if ids == ["4", "5"] and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # Ctrl-C while the third batch is in flight
        sent.append(ids)
        return httpx.Response(200, json={"upserted": len(ids)})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    args = parse("c", str(path), "--url", "http://127.0.0.1:1", "--batch", "2")
    assert run_index(args, client=client) == 130
    assert ProgressFile(path, "http://127.0.0.1:1", "c").load()["docs"] == 4  # type: ignore[index]
    assert run_index(args, client=client) == 0  # the in-flight batch is sent again, nothing else
    assert sent == [["0", "1"], ["2", "3"], ["4", "5"]]
