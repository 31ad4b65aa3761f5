"""Layering rules, checked on the AST with no exemptions: services/ is the core (no web framework, no app);
gateway/ is HTTP over the core; trt_build/ uses only services.config and services.registry; cli/ is the
composition root; nothing imports bench; and no two project modules import each other in a cycle, counting
lazy and TYPE_CHECKING imports (a cycle hidden behind either is still one)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("services", "gateway", "trt_build", "cli")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


MODULES = {module_name(p): p for package in PACKAGES for p in files(package)}


def imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it; `from pkg import mod` names the submodule."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES)
    return out


def roots(path: Path) -> set[str]:
    return {m.split(".")[0] for m in imports(path)}


@pytest.mark.parametrize("path", files("services"), ids=lambda p: str(p.relative_to(ROOT)))
def test_services_is_the_core(path: Path) -> None:
    bad = roots(path) & {"fastapi", "starlette", "gateway", "trt_build", "cli", "bench", "tests"}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", files("gateway"), ids=lambda p: str(p.relative_to(ROOT)))
def test_gateway_is_http_only(path: Path) -> None:
    bad = roots(path) & {"trt_build", "cli", "bench", "tests"}
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", files("trt_build"), ids=lambda p: str(p.relative_to(ROOT)))
def test_trt_build_uses_only_config_and_registry(path: Path) -> None:
    core = {m for m in imports(path) if m.startswith("services")}
    bad = (core - {"services.config", "services.registry"}) | (
        roots(path) & {"gateway", "cli", "bench", "tests"}
    )
    assert not bad, f"{path} imports {bad}"


@pytest.mark.parametrize("path", files("cli"), ids=lambda p: str(p.relative_to(ROOT)))
def test_cli_imports_no_bench_or_tests(path: Path) -> None:
    assert not roots(path) & {"bench", "tests"}


def test_no_import_cycles() -> None:
    graph = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    # a package's __init__ re-exporting its own modules is not a cycle through the package's users
    for name in graph:
        graph[name] = {
            m for m in graph[name] if not (name.startswith(m + ".") and (ROOT / m.replace(".", "/")).is_dir())
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_bench_is_not_packaged() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert (
        '"bench*"' not in text
        and "bench" not in text.split("[tool.setuptools.packages.find]")[1].split("\n")[1]
    )


def test_no_folder_named_triton_on_path() -> None:
    """A `triton/` folder on sys.path breaks transformers' imports (cpu-serving.md)."""
    assert not (ROOT / "triton").exists()
