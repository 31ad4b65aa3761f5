"""Layering rules, checked on the AST: services/ is the core (no web framework, no gateway);
trt_build/ uses only services.config and services.registry; gateway/ never imports trt_build."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = ROOT / "services" / "cli.py"  # wires gateway/trt_build lazily into commands


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", files("services"), ids=lambda p: str(p.relative_to(ROOT)))
def test_services_is_the_core(path: Path) -> None:
    if path == COMPOSITION_ROOT:
        return
    bad = {
        m
        for m in imports(path)
        if m.split(".")[0] in {"fastapi", "starlette", "gateway", "trt_build", "bench"}
    }
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", files("trt_build"), ids=lambda p: str(p.relative_to(ROOT)))
def test_trt_build_uses_only_config_and_registry(path: Path) -> None:
    bad = {
        m
        for m in imports(path)
        if m.startswith("services") and m not in {"services.config", "services.registry"}
    }
    bad |= {m for m in imports(path) if m.split(".")[0] == "gateway"}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", files("gateway"), ids=lambda p: str(p.relative_to(ROOT)))
def test_gateway_does_not_build(path: Path) -> None:
    assert not {m for m in imports(path) if m.split(".")[0] == "trt_build"}


def test_no_folder_named_triton_on_path() -> None:
    """A `triton/` folder on sys.path breaks transformers' imports (cpu-serving.md)."""
    assert not (ROOT / "triton").exists()
