"""Fixtures shared by the media tests."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def qwen_vl_utils() -> ModuleType:
    """qwen-vl-utils' vision_process (pinned in the test extra). It imports torchvision at import time,
    which is not installed here; stub modules stand in, and only its pure functions are called."""
    stubs = {name: ModuleType(name) for name in ("torchvision", "torchvision.io", "torchvision.transforms")}
    stubs["torchvision"].__version__ = "0.28.0"  # type: ignore[attr-defined]
    stubs["torchvision"].io = stubs["torchvision.io"]  # type: ignore[attr-defined]
    stubs["torchvision"].transforms = stubs["torchvision.transforms"]  # type: ignore[attr-defined]
    stubs["torchvision.transforms"].InterpolationMode = object  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:  # the stubs leave sys.modules once it is imported
        for name, module in stubs.items():
            patch.setitem(sys.modules, name, module)
        return importlib.import_module("qwen_vl_utils.vision_process")
