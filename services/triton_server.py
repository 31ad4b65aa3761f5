"""Run a real `tritonserver` locally: the binary and python backend shipped in the nvidia-pytriton wheel.

Pitfalls this handles (shared/reference/cpu-serving.md): the stub needs LD_LIBRARY_PATH on the wheel's
bundled libs or the server hangs (never ready, never exits), so readiness is always awaited with a
deadline; the stub finds numpy through `python3` on PATH, so the venv's bin goes first; every address is
bound to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from services.config import Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TritonLayout:
    binary: Path
    backend_files: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls) -> TritonLayout:
        import pytriton

        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
        layout = cls(
            binary=root / "bin" / "tritonserver",
            backend_files=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=libs,
        )
        for p in (layout.binary, layout.backend_files, layout.stub, layout.libs):
            if not p.exists():
                raise FileNotFoundError(f"nvidia-pytriton layout: {p} is missing")
        return layout

    def backend_dir(self, dest: Path) -> Path:
        """A --backend-directory whose python/ holds the backend library, utils and our Python's stub."""
        py = dest / "python"
        py.mkdir(parents=True, exist_ok=True)
        for src in (
            self.backend_files / "libtriton_python.so",
            self.backend_files / "triton_python_backend_utils.py",
            self.stub,
        ):
            target = py / src.name
            if not target.exists() or target.stat().st_size != src.stat().st_size:
                shutil.copy2(src, target)
        return dest


@dataclass
class TritonPorts:
    http: int
    grpc: int
    metrics: int

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http}"


class LocalTriton:
    """A tritonserver child process; `start()` returns once every model is ready, or raises."""

    def __init__(
        self, settings: Settings, models: list[str] | None = None, log_path: Path | None = None
    ) -> None:
        self.settings = settings
        self.models = models
        self.ports = TritonPorts(
            http=settings.triton_http_port or free_port(),
            grpc=settings.triton_grpc_port or free_port(),
            metrics=settings.triton_metrics_port or free_port(),
        )
        self.log_path = log_path or settings.data_dir / "logs" / f"tritonserver-{self.ports.grpc}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cold_start_s: float | None = None

    def command(self, backend_dir: Path) -> list[str]:
        layout = TritonLayout.find()
        cmd = [
            str(layout.binary),
            f"--model-repository={self.settings.model_repository}",
            f"--backend-directory={backend_dir}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            f"--http-address={self.settings.triton_bind_address}",
            f"--grpc-address={self.settings.triton_bind_address}",
            f"--metrics-address={self.settings.triton_bind_address}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
            "--log-verbose=0",
        ]
        if self.models is not None:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={m}" for m in self.models]
        return cmd

    def env(self) -> dict[str, str]:
        layout = TritonLayout.find()
        env = dict(os.environ)
        # the interpreter's own libdir first: the stub embeds libpython, and extension modules (ssl) need
        # its symbols from the same build
        libdir = sysconfig.get_config_var("LIBDIR")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [libdir, str(layout.libs), env.get("LD_LIBRARY_PATH")])
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def start(self) -> TritonPorts:
        backend_dir = TritonLayout.find().backend_dir(self.settings.data_dir / "triton-backends")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.command(backend_dir),
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(self.settings.triton_startup_timeout_s)
        except Exception:
            self.stop()
            raise
        self.cold_start_s = time.perf_counter() - started
        return self.ports

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.ports.http_url}/v2/health/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.proc.returncode}; log: {self.log_path}\n{self.tail()}"
                )
            if self.ready():
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"tritonserver not ready after {timeout:.0f}s; log: {self.log_path}\n{self.tail()}"
        )

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL the whole process group (the python stubs are children)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
