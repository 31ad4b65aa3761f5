"""The embedded store in a process of its own, and the gateway's client for it.

Why a process: Qdrant Edge holds the GIL for every call: an exact top-10 over 100k points takes ~20 ms,
opening a 100k-point shard ~0.3 s (measured, docs/qdrant-edge-notes.md). In the gateway's process each of
those is an event-loop stall for every request in flight. `embedfleet serve` therefore starts
`python -m services.store.host` beside the gateway (as it starts Triton); the host owns the data
directory (EdgeBackend's lock) and answers `Backend` calls over a Unix socket. Several gateway workers can
share it. Tests, CLI tools and a Celery worker without a socket open `EdgeBackend` in-process instead
(one owner at a time).

Wire: `multiprocessing.connection` (length-prefixed pickles, HMAC handshake with a per-run key) on a
socket file readable by the owner only. One connection per calling thread; one host thread per
connection. Errors cross as (class name, message, field, retry_after) and are rebuilt from
`services.errors`, so a 404 or 400 raised in the host is the same 404 or 400 in the gateway.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from services import errors
from services.config import Settings
from services.errors import EmbedfleetError, Transient
from services.store.backend import Backend
from services.store.edge import EdgeBackend, EdgeTuning

log = logging.getLogger("embedfleet.store")
METHODS = frozenset(
    {
        "create",
        "drop",
        "create_index",
        "set_alias",
        "upsert",
        "delete",
        "retrieve",
        "query",
        "scroll",
        "count",
        "meta_get",
        "meta_put",
        "meta_delete",
        "meta_list",
        "log_put",
        "log_recall",
        "log_forget",
        "log_entries",
        "flush",
        "unindexed",
        "build_index",
    }
)


class StoreUnavailable(Transient):
    """The store host is not answering (restarting, or gone): retry shortly."""

    status = 503
    code = "store_unavailable"


def _wire_error(exc: BaseException) -> tuple[str, str, str | None, float | None]:
    if isinstance(exc, EmbedfleetError):
        return type(exc).__name__, exc.message, exc.field, exc.retry_after
    return "EmbedfleetError", f"store error: {type(exc).__name__}: {exc}", None, None


def _rebuild(name: str, message: str, field: str | None, retry_after: float | None) -> EmbedfleetError:
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, EmbedfleetError)):
        cls = EmbedfleetError
    return cls(message, field=field, retry_after=retry_after)


# --- host --------------------------------------------------------------------------------------------
def _serve_connection(conn: Connection, backend: Backend) -> None:
    with conn:
        while True:
            try:
                method, args = conn.recv()
            except (EOFError, OSError):
                return
            try:
                if method not in METHODS:
                    raise EmbedfleetError(f"unknown store call {method!r}")
                reply: tuple[str, Any] = ("ok", getattr(backend, method)(*args))
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    raise
                reply = ("err", _wire_error(exc))
            try:
                conn.send(reply)
            except (EOFError, OSError):
                return


def serve(socket_path: Path, authkey: bytes, backend: Backend, ready: threading.Event | None = None) -> None:
    """Accept connections until the process is told to stop (SIGTERM); then close the backend cleanly."""
    if socket_path.exists():
        socket_path.unlink()
    listener = Listener(str(socket_path), family="AF_UNIX", authkey=authkey)
    os.chmod(socket_path, 0o600)
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn = listener.accept()
            except (OSError, EOFError):
                if stopping.is_set():
                    return
                continue  # a client that failed the handshake
            threading.Thread(target=_serve_connection, args=(conn, backend), daemon=True).start()

    threading.Thread(target=accept, name="store-accept", daemon=True).start()
    if ready is not None:
        ready.set()
    print(f"store host ready on {socket_path}", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    stopping.set()
    listener.close()
    backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--flush-ms", type=int, default=1000)
    parser.add_argument("--index-threshold", type=int, default=20_000)
    parser.add_argument("--hnsw-ef", type=int, default=128)
    parser.add_argument("--build-threads", type=int, default=1)
    args = parser.parse_args(argv)
    authkey = bytes.fromhex(os.environ["EMBEDFLEET_STORE_KEY"])
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # handled by sigwait
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    tuning = EdgeTuning(
        flush_ms=args.flush_ms,
        index_threshold=args.index_threshold,
        hnsw_ef=args.hnsw_ef,
        build_threads=args.build_threads,
    )
    serve(args.socket, authkey, EdgeBackend(args.root, tuning))
    return 0


# --- launcher (used by `embedfleet serve`) ----------------------------------------------------------
class StoreHost:
    """Starts the host process beside the gateway, waits until it answers, restarts it if it dies (the
    shards' WAL and meta.sqlite make a restart lose nothing acknowledged), stops it with the gateway."""

    def __init__(self, settings: Settings, ready_timeout_s: float = 60.0) -> None:
        self.settings = settings
        self.root = settings.data_dir / "edge"
        self._tmp = Path(tempfile.mkdtemp(prefix="embedfleet-store-"))  # short path: AF_UNIX caps it at 107
        self.socket = self._tmp / "store.sock"
        self.key = secrets.token_hex(32)
        self.log_path = settings.data_dir / "store-host.log"
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def _spawn(self) -> None:
        s = self.settings
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # the store is written through this process alone, so a host that crashes is restarted here;
        # it must not outlive us either (it holds the data directory's lock)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.store.host",
                "--root",
                str(self.root),
                "--socket",
                str(self.socket),
                "--flush-ms",
                str(s.store_flush_ms),
                "--index-threshold",
                str(s.store_index_threshold),
                "--hnsw-ef",
                str(s.store_hnsw_ef),
                "--build-threads",
                str(s.store_build_threads),
            ],
            env={**os.environ, "EMBEDFLEET_STORE_KEY": self.key},
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = RemoteBackend(self.socket, bytes.fromhex(self.key))
        deadline = time.monotonic() + self.ready_timeout_s
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"store host exited ({self.proc.returncode}); see {self.log_path}")
                try:
                    client.call("flush")
                    return
                except StoreUnavailable:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"store host not ready after {self.ready_timeout_s}s") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def start(self) -> Settings:
        """Start the host; returns settings that point gateway processes at it."""
        self._spawn()
        threading.Thread(target=self._watch, name="store-host-watch", daemon=True).start()
        return self.settings.model_copy(update={"store_socket": self.socket, "store_key": self.key})

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None and not self._stopping.is_set():
                log.error("store host exited with %s; restarting", self.proc.returncode)
                try:
                    self._spawn()
                except Exception:
                    log.exception("store host restart failed")

    def stop(self) -> None:
        self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self._tmp, ignore_errors=True)


# --- client ------------------------------------------------------------------------------------------
class RemoteBackend:
    """`Backend` over the host's socket: every method forwards to the same method of the host's
    EdgeBackend. Thread-safe (one connection per thread)."""

    kind = "edge"

    def __init__(self, socket_path: Path, authkey: bytes) -> None:
        self.socket_path = socket_path
        self._authkey = authkey
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._guard = threading.Lock()

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Client(str(self.socket_path), family="AF_UNIX", authkey=self._authkey)
            except (OSError, EOFError) as exc:
                raise StoreUnavailable(
                    f"store host at {self.socket_path} is not answering: {exc}", retry_after=1
                ) from exc
            self._local.conn = conn
            with self._guard:
                self._conns.append(conn)
        return conn

    def call(self, method: str, *args: Any) -> Any:
        conn = self._conn()
        try:
            conn.send((method, args))
            status, value = conn.recv()
        except (OSError, EOFError) as exc:
            self._local.conn = None
            raise StoreUnavailable(f"store host connection lost during {method}", retry_after=1) from exc
        if status == "err":
            raise _rebuild(*value)
        return value

    def __getattr__(self, method: str) -> Any:
        if method not in METHODS:
            raise AttributeError(method)
        return lambda *args: self.call(method, *args)

    def close(self) -> None:
        with self._guard:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
