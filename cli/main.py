"""`embedfleet` command line: build, triton, serve, worker, index, store.

The composition root: it imports `gateway` and `trt_build` lazily, inside the command that needs them,
so `embedfleet index` (an HTTP client) starts without loading the model stack.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading

from cli import index as index_cli
from cli import store as store_cli
from services.config import Settings, get_settings
from services.registry import load_registry

log = logging.getLogger("embedfleet")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_build(args: argparse.Namespace, settings: Settings) -> int:
    from trt_build.build import build

    registry = load_registry(settings.registry_path)
    names = registry.triton_models(settings.models) if args.model == "all" else [args.model]
    for name in names:
        build(registry, name, settings, target=args.target, force=args.force)
    return 0


def ensure_built(settings: Settings) -> None:
    """Build whatever the served models lack (idempotent: up-to-date entries are left alone)."""
    from trt_build.build import build

    registry = load_registry(settings.registry_path)
    for name in registry.triton_models(settings.models):
        build(registry, name, settings, target=settings.build_target)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_triton(args: argparse.Namespace, settings: Settings) -> int:
    from services.triton_server import LocalTriton

    if not args.no_build:
        ensure_built(settings)
    registry = load_registry(settings.registry_path)
    triton = LocalTriton(settings, models=registry.triton_models(settings.models))
    ports = triton.start()
    print(
        f"tritonserver ready in {triton.cold_start_s:.1f}s: grpc {ports.grpc_url} http {ports.http_url} "
        f"metrics http://127.0.0.1:{ports.metrics}/metrics (log {triton.log_path})",
        flush=True,
    )
    try:
        _wait_for_signal()
    finally:
        triton.stop()
        print("tritonserver stopped", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from gateway.app import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v}
    settings = settings.model_copy(update=overrides)
    if not _is_loopback(settings.host) and not (settings.api_keys or settings.api_keys_file):
        print(
            f"refusing to serve on {settings.host} without API keys (set EMBEDFLEET_API_KEYS or "
            "EMBEDFLEET_API_KEYS_FILE, or bind to 127.0.0.1)",
            file=sys.stderr,
        )
        return 2
    triton = None
    if settings.local_triton:
        from services.triton_server import LocalTriton

        ensure_built(settings)
        registry = load_registry(settings.registry_path)
        triton = LocalTriton(settings, models=registry.triton_models(settings.models))
        ports = triton.start()
        log.info(
            "local tritonserver ready in %.1fs on %s (metrics :%d)",
            triton.cold_start_s,
            ports.grpc_url,
            ports.metrics,
        )
        settings = settings.model_copy(update={"triton_url": ports.grpc_url})
        os.environ["EMBEDFLEET_TRITON_URL"] = ports.grpc_url  # for worker processes (--workers > 1)
    store = None
    if not settings.qdrant_url and settings.store_socket is None:
        from services.store.host import StoreHost

        store = StoreHost(settings)
        settings = store.start()
        log.info(
            "embedded store (Qdrant Edge) hosted by pid %s on %s", store.proc and store.proc.pid, store.socket
        )
        os.environ["EMBEDFLEET_STORE_SOCKET"] = str(settings.store_socket)  # for worker processes
        os.environ["EMBEDFLEET_STORE_KEY"] = settings.store_key or ""
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default handler that would
    # kill us before `finally` stops the Triton child, so make it an exception instead.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    try:
        if settings.workers > 1:
            uvicorn.run(
                "gateway.app:app_from_env",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                log_level=settings.log_level,
                access_log=False,
            )
        else:
            uvicorn.run(
                create_app(settings),
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=False,
            )
    finally:
        if triton is not None:
            triton.stop()
        if store is not None:
            store.stop()
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from services.worker.tasks import main as worker_main

    worker_main(settings, concurrency=args.concurrency)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedfleet", description="multimodal embedding inference fleet")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="export a model, check parity, write its Triton repository entry")
    p.add_argument("model", help="registry model name, or 'all' for every served model")
    p.add_argument("--target", choices=["cpu", "gpu", "torch-cuda"], default=None)
    p.add_argument("--force", action="store_true")
    p = sub.add_parser("triton", help="run a local tritonserver on the model repository")
    p.add_argument("--no-build", action="store_true")
    p = sub.add_parser("serve", help="run the gateway (and a local Triton when triton_url is unset)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int)
    p = sub.add_parser("worker", help="run a Celery worker for indexing and backfill jobs (needs broker_url)")
    p.add_argument("--concurrency", type=int, default=1)
    index_cli.add_parser(sub)
    store_cli.add_parser(sub)
    args = parser.parse_args(argv)
    settings = get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if getattr(args, "target", None) is None and args.command == "build":
        args.target = settings.build_target
    handlers = {"build": cmd_build, "triton": cmd_triton, "serve": cmd_serve, "worker": cmd_worker}
    handlers["index"] = index_cli.run_index
    handlers["store"] = store_cli.run
    return handlers[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
