"""Dockerfile honesty without a Docker engine: every COPY source exists (and is not dockerignored),
every pip install is the project's own install, images are pinned, non-root, with health checks."""

from __future__ import annotations

import re
import shlex
import tomllib
from fnmatch import fnmatch

import pytest

from tests.unit.deploy.deploy_support import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def pip_requirements() -> list[tuple[str, bool]]:
    """(requirement, installed with --no-deps) for every `pip install` argument in a RUN."""
    reqs = []
    for keyword, args in instructions():
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if len(words) >= 3 and words[0].endswith("pip") and words[1] == "install":
                no_deps = "--no-deps" in words
                skip_next = False
                for word in words[2:]:
                    if skip_next:
                        skip_next = False
                    elif word in ("--index-url", "-i", "--extra-index-url"):
                        skip_next = True
                    elif not word.startswith("-"):
                        reqs.append((word, no_deps))
    return reqs


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    ignored = dockerignore()
    sources = []
    for keyword, args in instructions():
        if keyword != "COPY" or "--from=" in args:
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources += words[:-1]
    assert sources, "no COPY from the build context"
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path"
        assert not any(fnmatch(src, pat) or src == pat for pat in ignored), f"COPY {src} is dockerignored"


def test_pip_installs_match_the_project() -> None:
    """Only the project itself (with its declared extras), the torch pin the project documents, and
    single packages of the project's extras without their dependencies."""
    text = (REPO / "pyproject.toml").read_text()
    optional = tomllib.loads(text)["project"].get("optional-dependencies", {})
    extra_packages = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for reqs in optional.values() for r in reqs}
    torch_pins = set(re.findall(r"torch==[0-9][0-9.]*", text))
    reqs = pip_requirements()
    assert (".", False) in reqs, "the runtime image must `pip install .`"
    for req, no_deps in reqs:
        if req.startswith("torch"):
            assert req in torch_pins, f"{req} differs from the project's documented pin {torch_pins}"
        elif req in extra_packages:
            assert no_deps, f"{req}: a single extra package must come without its dependencies"
        else:
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", req)
            assert match, f"pip install {req}: not the project's own install"
            assert set(filter(None, (match.group(1) or "").split(","))) <= set(optional), (
                f"{req}: unknown extra"
            )


def test_torch_comes_from_the_cpu_index() -> None:
    runs = [args for keyword, args in instructions() if keyword == "RUN" and "torch==" in args]
    assert runs and all("--index-url https://download.pytorch.org/whl/cpu" in r for r in runs)


def test_bases_are_pinned_and_stages_exist() -> None:
    ins = instructions()
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    stages = {}
    for keyword, rest in ins:
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            stages[name.strip()] = image
    assert {"gateway", "worker"} <= stages.keys()
    for image in stages.values():
        if image in stages:
            continue  # a previous stage
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.match(r"\d", tag), f"{image} is not pinned"
        assert name == "python" and tag.startswith("3.11") and "slim" in tag, image


def test_runtime_is_non_root_with_healthchecks() -> None:
    ins = instructions()
    users = [a for k, a in ins if k == "USER"]
    assert users and all(not u.startswith(("0", "root")) for u in users)
    text = DOCKERFILE.read_text()
    for stage in ("gateway", "worker"):
        block = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "HEALTHCHECK" in block, f"{stage} has no HEALTHCHECK"
    assert "/healthz" in text.split(" AS gateway\n", 1)[1]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_stages_run_the_cli(command: str) -> None:
    assert f'CMD ["{command}"]' in DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["embedfleet"]' in DOCKERFILE.read_text()
