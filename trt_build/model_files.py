"""Python-backend model files in the Triton repository: `<model>/<version>/model.py` and its siblings.

A model file runs inside the backend stub, where the project is not importable. The stub puts the model
folder on `sys.path` and imports the file as the module `<version>.model`, so a relative import
(`from . import pooling`) finds `<version>/pooling.py` there, as it finds `trt_build/pooling.py` in the
source tree. The siblings to copy are read from the file's own relative imports: what is copied cannot
drift from what is imported.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

SOURCE = Path(__file__).parent


def relative_imports(path: Path) -> list[str]:
    """Modules `path` imports from its own package (`from . import x`, `from .x import y`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return sorted(names)


def siblings(source: str) -> list[str]:
    """File names of every module `source` needs beside it, transitively."""
    found: list[str] = []
    todo = [source]
    while todo:
        for name in relative_imports(SOURCE / todo.pop()):
            file = f"{name}.py"
            if file not in found:
                found.append(file)
                todo.append(file)
    return sorted(found)


def install_model(source: str, version_dir: Path) -> list[Path]:
    """Copy `trt_build/<source>` to `<version_dir>/model.py` with its siblings; returns the files written."""
    version_dir.mkdir(parents=True, exist_ok=True)
    copies = {source: version_dir / "model.py", **{f: version_dir / f for f in siblings(source)}}
    for src, dst in copies.items():
        shutil.copyfile(SOURCE / src, dst)
    return list(copies.values())


def copy_weights(model_dir: Path, dest: Path, patterns: tuple[str, ...]) -> None:
    """Copy what an engine loads (config, safetensors) into the repository, skipping files already there
    at the same size and not older than their source: a rebuild does not rewrite gigabytes, and a
    retrained model whose files kept their sizes (a config.json with other token ids) is still copied."""
    if model_dir.resolve() == dest.resolve():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for pattern in patterns:
        for src in model_dir.glob(pattern):
            target = dest / src.name
            have = target.stat() if target.exists() else None
            new = src.stat()
            if have is None or have.st_size != new.st_size or have.st_mtime < new.st_mtime:
                shutil.copyfile(src, target)
