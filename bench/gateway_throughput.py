"""Served (gateway + Triton) vs raw in-process ONNX Runtime vs a peer server, side by side in one run.

Raw: ORT on the same sentences, batches sorted by length, at several batch sizes, on one intra-op session
and on single-thread workers (`raw_ort`); its best is the reference. Served: `embedfleet serve` on
loopback, loaded by bench/loadgen.py in a separate process with (a) 64 concurrent single-sentence clients
and (b) 16 clients x 16-sentence requests. Peer: Infinity (infinity-emb 0.0.78 in its own venv, set up as
bench/README.md says) serving the same model folder, once per engine (`optimum` = ONNX Runtime, `torch`),
under the same loads and sentences; skipped with a message where its venv or model folder is absent. Raw
is measured between columns (this machine's speed drifts) and each column's ratio uses the mean of the raw
runs either side of it. Every load phase also records the server's CPU seconds per request from /proc:
gateway and Triton (tritonserver plus its python-backend stubs) apart, Infinity as one tree.

    python -m bench.gateway_throughput --out bench/results/gateway_cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import numpy as np

from services.config import get_settings
from services.registry import load_registry
from services.tokenizer import TextTokenizer
from services.triton_server import free_port
from tests.corpus import sentences
from trt_build.build import ort_run

MODEL = "all-minilm-l6-v2"
PEER_VENV = Path("/work/peers/infinity-venv")
PEER_MODEL = Path("/work/peers/models/all-MiniLM-L6-v2")
PEER_ENGINES = ("optimum", "torch")
# Stated rather than left to Infinity's defaults, so the column says what ran: no start-up warm-up (the
# bench warms every column the same way), no ORT graph rewrite (it fails under optimum 2.x anyway and
# gave no gain offline, shared/reference/cpu-serving.md), no torch.compile (inductor on 2 cores takes
# minutes) and no BetterTransformer (absent from optimum 2.x).
PEER_FLAGS = ("--device", "cpu", "--pooling-method", "mean", "--no-model-warmup", "--log-level", "warning")
ENGINE_FLAGS = {"optimum": ("--onnx-disable-optimize",), "torch": ("--no-compile", "--no-bettertransformer")}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raw_ort(
    texts: list[str],
    batch_sizes: tuple[int, ...] = (32, 64, 128),
    repeats: int = 2,
    worker_batch_sizes: tuple[int, ...] = (32, 64),
) -> dict[str, float]:
    """Sentences/s of ONNX Runtime in-process over batches sorted by length: `b<n>` one session with an
    intra-op thread a core (how ORT is usually called), `w<k>_b<n>` k threads a core each running every
    k-th batch on a single-thread session (how the served engine shares a batch, trt_build/run_plan.py);
    the best of both is the reference. `b1_p50_ms`: one sentence at a time on the intra-op session."""
    from concurrent.futures import ThreadPoolExecutor

    from services.batcher import pad_tokens

    settings = get_settings()
    spec = load_registry(settings.registry_path).get(MODEL)
    tok = TextTokenizer.for_model(spec)
    cores = os.cpu_count() or 2
    onnx = settings.model_repository / spec.engines["onnx"]
    run, single = ort_run(onnx, threads=cores), ort_run(onnx, threads=1)
    ids = tok.encode(texts).ids
    order = np.argsort([len(x) for x in ids])
    out: dict[str, float] = {}

    def rate(batches: list[tuple[np.ndarray, np.ndarray]], workers: int) -> float:
        """One worker: every batch on the intra-op session; k workers: every k-th on the single-thread one."""
        engine = run if workers == 1 else single
        best = 0.0
        with ThreadPoolExecutor(workers) as pool:
            for _ in range(repeats):
                t0 = time.perf_counter()
                list(pool.map(lambda k: [engine(*b) for b in batches[k::workers]], range(workers)))
                best = max(best, len(texts) / (time.perf_counter() - t0))
        return best

    for b in sorted({*batch_sizes, *worker_batch_sizes}):
        batches = [pad_tokens([ids[j] for j in order[i : i + b]]) for i in range(0, len(order), b)]
        if b in batch_sizes:
            out[f"b{b}"] = rate(batches, 1)
        if b in worker_batch_sizes and cores > 1:
            out[f"w{cores}_b{b}"] = rate(batches, cores)
    singles = []
    for j in order[:: max(1, len(order) // 300)]:
        t0 = time.perf_counter()
        run(*pad_tokens([ids[j]]))
        singles.append((time.perf_counter() - t0) * 1000)
    out["b1_p50_ms"] = float(np.percentile(singles, 50))
    return out


# ------------------------------------------------------------------------------------------ CPU time
def _proc_table() -> dict[int, tuple[str, int, float]]:
    """pid -> (comm, ppid, user + system CPU seconds of all its threads) for every live process."""
    table: dict[int, tuple[str, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # comm may hold spaces and parentheses; the fields after the last ')' start at field 3 (state)
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2 :].split()
        table[int(entry.name)] = (comm, int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK)
    return table


@dataclass(frozen=True)
class CpuMeter:
    """CPU seconds used so far by a server's process tree, booked per component.

    The root process books under `label`; a process whose name is a key of `split` books itself and
    its descendants under that value (e.g. tritonserver and its python-backend stubs apart from the
    gateway that started it); any other descendant (a store host, uvicorn workers) under
    `<label>_children`, so nothing idle hides in the figure that matters. Processes that exited
    are not counted: the servers here keep theirs.
    """

    root: int
    label: str
    split: dict[str, str] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        out = dict.fromkeys([self.label, *self.split.values()], 0.0)
        stack = [(self.root, self.label)]
        while stack:
            pid, group = stack.pop()
            if pid not in table:
                continue
            comm, _, cpu = table[pid]
            group = self.split.get(comm, group)
            out[group] = out.get(group, 0.0) + cpu
            below = f"{self.label}_children" if group == self.label else group
            stack.extend((child, below) for child in children.get(pid, []))
        return out


# ------------------------------------------------------------------------------------------- servers
@dataclass(frozen=True)
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    cold_start_s: float


def wait_ready(
    url: str, timeout: float = 180, path: str = "/readyz", proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"server at {url} not ready")


def _tail(log: IO[bytes], lines: int = 30) -> str:
    log.seek(0)
    return "\n".join(log.read().decode(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def _server(
    cmd: Sequence[str],
    env: dict[str, str],
    url: str,
    ready_path: str,
    timeout: float,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """A server process in its own session, yielded once `url + ready_path` answers 200 (a server that
    neither gets ready nor exits must not hang the bench); its log is shown when it fails to start."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            try:
                wait_ready(url, timeout, ready_path, proc)
            except (RuntimeError, TimeoutError):
                print(f"--- {cmd[0]} log tail ---\n{_tail(log)}", file=sys.stderr)
                raise
            yield Server(url, proc, time.perf_counter() - started)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def serving(env: dict[str, str], timeout: float = 300) -> Iterator[Server]:
    """`embedfleet serve` (gateway + local Triton) on a free loopback port; stopped on exit."""
    port = free_port()
    full = {**os.environ, "EMBEDFLEET_HOST": "127.0.0.1", "EMBEDFLEET_PORT": str(port), **env}
    cmd = [sys.executable, "-m", "cli.main", "serve"]
    with _server(cmd, full, f"http://127.0.0.1:{port}", "/readyz", timeout) as s:
        yield s


@dataclass(frozen=True)
class Peer:
    """Infinity in its own venv over a model folder (a copy of the packaged one plus `model.onnx`)."""

    venv: Path
    model: Path

    def missing(self, engine: str) -> str | None:
        """Why `engine` cannot run here; None where it can."""
        how = "see bench/README.md, 'Peer column'"
        if not (self.venv / "bin" / "infinity_emb").exists():
            return f"no Infinity venv at {self.venv} ({how})"
        if not (self.model / "config.json").exists():
            return f"no peer model folder at {self.model} ({how})"
        if engine == "optimum" and not (self.model / "model.onnx").exists():
            return f"no {self.model / 'model.onnx'} for the optimum engine ({how})"
        return None

    def command(self, engine: str, port: int) -> list[str]:
        # `--model-id .` (run inside the folder): given an absolute folder, Infinity 0.0.78 hands optimum
        # 2.x the ONNX file as an absolute path, which it matches against relative names and refuses
        # (FileNotFoundError: Could not find any ONNX files with target file name /.../model.onnx).
        return [
            str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", MODEL,
            "--engine", engine, *PEER_FLAGS, *ENGINE_FLAGS[engine],
            "--host", "127.0.0.1", "--port", str(port), "--url-prefix", "/v1",
        ]  # fmt: skip

    def versions(self) -> dict[str, str]:
        code = (
            "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('infinity_emb', 'optimum', 'onnxruntime', 'torch', 'transformers', 'sentence-transformers')}))"
        )
        out = subprocess.run([str(self.venv / "bin" / "python"), "-c", code], capture_output=True, text=True)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {"error": out.stderr[-300:]}


def _peer_env() -> dict[str, str]:
    """Offline, no telemetry (posthog would open a non-loopback socket), none of our venv's paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


@contextlib.contextmanager
def peer_server(peer: Peer, engine: str, timeout: float = 300) -> Iterator[Server]:
    """Infinity with `engine` on a free loopback port, OpenAI routes under /v1; stopped on exit."""
    port = free_port()
    cmd = peer.command(engine, port)
    with _server(cmd, _peer_env(), f"http://127.0.0.1:{port}", "/health", timeout, cwd=peer.model) as s:
        yield s


# ---------------------------------------------------------------------------------------------- load
def load(
    url: str,
    texts_file: str,
    clients: int,
    batch: int,
    requests: int,
    seconds: float,
    meter: CpuMeter | None = None,
    honor_retry_after: bool = False,
    path: str | None = None,
) -> dict[str, object]:
    """bench/loadgen.py in its own process. With `path`, `texts_file` holds whole request bodies posted
    there in turn (see bench/loadgen.py); without, sentences for /v1/embeddings."""
    before = meter.read() if meter else {}
    source = ["--texts", texts_file] if path is None else ["--bodies", texts_file, "--path", path]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            url,
            "--model",
            MODEL,
            *source,
            "--clients",
            str(clients),
            "--batch",
            str(batch),
            "--requests",
            str(requests),
            "--seconds",
            str(seconds),
            *(["--honor-retry-after"] if honor_retry_after else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    if meter is not None:
        used = {k: v - before.get(k, 0.0) for k, v in meter.read().items()}
        done = max(cast(int, result["requests"]), 1)
        result["cpu_s"] = used
        result["cpu_s_per_request"] = {k: v / done for k, v in used.items()}
    return result


def warm_up(url: str, texts_file: str) -> None:
    load(url, texts_file, 16, 4, 200, 10)


def loads(url: str, texts_file: str, n: int, seconds: float, meter: CpuMeter) -> dict[str, dict[str, object]]:
    """(a) 64 clients x 1 sentence, (b) 16 clients x 16 sentences."""
    return {
        "single_64_clients": load(url, texts_file, 64, 1, n * 2, seconds, meter),
        "16x16": load(url, texts_file, 16, 16, n, seconds, meter),
    }


def _best(raw: dict[str, float], kinds: str = "bw") -> float:
    """The best rate of a raw run: of every engine setup, or of the intra-op session only (`kinds="b"`)."""
    return max(v for k, v in raw.items() if k[0] in kinds and not k.endswith("_ms"))


def unloaded(url: str, texts_file: str) -> dict[str, object]:
    """One client, one sentence at a time: the latency floor a single query sees."""
    return load(url, texts_file, 1, 1, 300, 30)


def overload(texts_file: str, seconds: float, queue: int = 64) -> dict[str, object]:
    """4x overload: 256 single-sentence clients on a gateway admitting `queue` inputs. Refusals must be
    cheap and fast (429 p99), the accepted work must keep the server's pace (goodput vs the same server's
    64-client best), and latency must come back once the load stops."""
    env = {"EMBEDFLEET_CACHE_BACKEND": "none", "EMBEDFLEET_MAX_QUEUE_INPUTS": str(queue)}
    with serving(env) as gw:
        warm_up(gw.url, texts_file)
        meter = CpuMeter(gw.proc.pid, "gateway", {"tritonserver": "triton"})
        calm = unloaded(gw.url, texts_file)
        best = load(gw.url, texts_file, queue, 1, 10**6, seconds, meter)
        polite = load(gw.url, texts_file, 4 * queue, 1, 10**6, seconds, meter, honor_retry_after=True)
        started = time.perf_counter()
        recovered_s = None
        while time.perf_counter() - started < 30:
            probe = load(gw.url, texts_file, 1, 1, 5, 5)
            if cast(float, probe["p50_ms"]) <= 1.5 * cast(float, calm["p50_ms"]):
                recovered_s = time.perf_counter() - started
                break
        rude = load(gw.url, texts_file, 4 * queue, 1, 10**6, seconds, meter)
    refused = cast(dict[str, dict[str, float]], polite["by_status_ms"]).get("429", {})
    return {
        "queue_inputs": queue,
        "unloaded": calm,
        "best_64_clients": best,
        "overload_256_clients_honoring_retry_after": polite,
        "goodput_ratio": cast(float, polite["sentences_per_s"]) / cast(float, best["sentences_per_s"]),
        "refused_p99_ms": refused.get("p99"),
        "recovery_s": recovered_s,
        "overload_256_clients_retrying_at_once": rude,
        "goodput_ratio_retrying_at_once": cast(float, rude["sentences_per_s"])
        / cast(float, best["sentences_per_s"]),
    }


def _vs_raw(
    col: dict[str, dict[str, object]], before: dict[str, float], after: dict[str, float]
) -> dict[str, object]:
    """The raw runs either side of a column, and its ratios to their mean best (of every raw setup; the
    `_intra_op` ratios use the intra-op session alone, the reference before the engine shared batches)."""
    best = float(np.mean([_best(before), _best(after)]))
    intra = float(np.mean([_best(before, "b"), _best(after, "b")]))
    single = cast(float, col["single_64_clients"]["sentences_per_s"])
    many = cast(float, col["16x16"]["sentences_per_s"])
    return {
        "raw_ort": {"before": before, "after": after, "best_mean": best, "intra_op_best_mean": intra},
        "ratio_single": single / best,
        "ratio_16x16": many / best,
        "ratio_single_intra_op": single / intra,
        "ratio_16x16_intra_op": many / intra,
    }


def _summary(name: str, col: dict[str, object]) -> str:
    lines = [name]
    for load_name, ratio in (("single_64_clients", "ratio_single"), ("16x16", "ratio_16x16")):
        r = cast(dict[str, float], col[load_name])
        cpu = ", ".join(
            f"{k} {v * 1000:.2f}" for k, v in cast(dict[str, float], r["cpu_s_per_request"]).items()
        )
        lines.append(
            f"  {load_name}: {r['sentences_per_s']:.0f} sent/s ({cast(float, col[ratio]):.2f} of raw), "
            f"p50/p95/p99 {r['p50_ms']:.0f}/{r['p95_ms']:.0f}/{r['p99_ms']:.0f} ms, "
            f"statuses {r['statuses']}, CPU ms/request: {cpu}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/gateway_cpu.json")
    p.add_argument("--n", type=int, default=2000, help="sentences (raw runs over all of them)")
    p.add_argument("--seconds", type=float, default=20.0, help="cap on each load phase")
    p.add_argument("--peer-venv", type=Path, default=PEER_VENV, help="Infinity's venv (bench/README.md)")
    p.add_argument("--peer-model", type=Path, default=PEER_MODEL, help="model folder Infinity serves")
    p.add_argument("--peer-engines", nargs="+", choices=PEER_ENGINES, default=list(PEER_ENGINES))
    p.add_argument("--no-peer", action="store_true", help="skip the Infinity columns")
    p.add_argument("--no-overload", action="store_true", help="skip the 4x overload phase")
    a = p.parse_args()
    texts = sentences(a.n)
    loadavg = {"start": os.getloadavg()}
    peer = Peer(a.peer_venv, a.peer_model)
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(texts, f)
        f.flush()
        with serving({"EMBEDFLEET_CACHE_BACKEND": "none"}) as gw:
            warm_up(gw.url, f.name)
            raws = [raw_ort(texts)]
            meter = CpuMeter(gw.proc.pid, "gateway", {"tritonserver": "triton"})
            gateway = loads(gw.url, f.name, a.n, a.seconds, meter)
            calm = unloaded(gw.url, f.name)
            raws.append(raw_ort(texts))
        peers: dict[str, dict[str, object]] = {}
        for engine in [] if a.no_peer else a.peer_engines:
            name = f"infinity-{engine}"
            if why := peer.missing(engine):
                print(f"{name} column skipped: {why}", file=sys.stderr)
                peers[name] = {"skipped": why}
                continue
            with peer_server(peer, engine) as srv:
                warm_up(srv.url, f.name)
                col = loads(srv.url, f.name, a.n, a.seconds, CpuMeter(srv.proc.pid, "infinity"))
                cold = srv.cold_start_s
            raws.append(raw_ort(texts))
            peers[name] = {
                "engine": engine,
                "flags": [*PEER_FLAGS, *ENGINE_FLAGS[engine], "--url-prefix", "/v1"],
                "versions": peer.versions(),
                "cold_start_s": cold,
                **col,
                **_vs_raw(col, raws[-2], raws[-1]),
            }
        overloaded = None if a.no_overload else overload(f.name, a.seconds)
    loadavg["end"] = os.getloadavg()
    vs_raw = _vs_raw(gateway, raws[0], raws[1])
    raw_b1 = float(np.mean([raws[0]["b1_p50_ms"], raws[1]["b1_p50_ms"]]))
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "loadavg": loadavg,
        "sentences": a.n,
        "seconds_per_load": a.seconds,
        "raw_ort": vs_raw["raw_ort"],
        "served_single_64_clients": gateway["single_64_clients"],
        "served_16x16": gateway["16x16"],
        "ratio_single": vs_raw["ratio_single"],
        "ratio_16x16": vs_raw["ratio_16x16"],
        "ratio_single_intra_op": vs_raw["ratio_single_intra_op"],
        "ratio_16x16_intra_op": vs_raw["ratio_16x16_intra_op"],
        "unloaded_single": calm,
        "unloaded_p50_vs_raw_b1_p50": cast(float, calm["p50_ms"]) / raw_b1,
        "overload": overloaded,
        "gateway_cold_start_s": gw.cold_start_s,
        "peers": peers if not a.no_peer else {"skipped": "--no-peer"},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"loadavg {loadavg}; raw ORT best per run: {[round(_best(r)) for r in raws]} sent/s")
    print(
        f"unloaded single p50 {calm['p50_ms']:.1f} ms = {result['unloaded_p50_vs_raw_b1_p50']:.2f} x raw b1"
    )
    if overloaded:
        print(
            f"overload: goodput {overloaded['goodput_ratio']:.2f} of best (retrying at once "
            f"{overloaded['goodput_ratio_retrying_at_once']:.2f}), "
            f"429 p99 {overloaded['refused_p99_ms']} ms, recovery {overloaded['recovery_s']} s"
        )
    print(_summary("gateway + Triton", {**gateway, **vs_raw}))
    for name, col in peers.items():
        print(f"{name}: skipped ({col['skipped']})" if "skipped" in col else _summary(name, col))


if __name__ == "__main__":
    main()
