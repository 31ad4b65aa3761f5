"""An entry's model.py loaded as Triton's python-backend stub loads it, with a stand-in for the backend's
utilities, so the CPU engine's `execute` runs in-process: shared by the text and cross-encoder tests."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> np.ndarray:
        return self.array


def load_python_model(
    root: Path, monkeypatch: pytest.MonkeyPatch, params: dict[str, str] | None = None
) -> Any:
    """`root`'s model.py initialized as Triton does, its config's parameters overridden by `params`.
    A request is a dict of input name -> array; a response has `output_tensors` and `error`."""
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = Tensor  # type: ignore[attr-defined]
    utils.TritonError = str  # type: ignore[attr-defined]
    utils.InferenceResponse = types.SimpleNamespace  # type: ignore[attr-defined]
    utils.get_input_tensor_by_name = lambda request, name: Tensor(name, request[name])  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    # as the stub does: the version folder is a package, so model.py's relative imports find its siblings
    package = f"entry_{root.name.replace('-', '_')}"
    version = types.ModuleType(package)
    version.__path__ = [str(root / "1")]
    monkeypatch.setitem(sys.modules, package, version)
    monkeypatch.delitem(sys.modules, f"{package}.run_plan", raising=False)
    loader = importlib.util.spec_from_file_location(f"{package}.model", root / "1" / "model.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    parsed = text_format.Parse((root / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config = json_format.MessageToDict(parsed, preserving_proto_field_name=True)
    for key, value in (params or {}).items():
        config.setdefault("parameters", {})[key] = {"string_value": value}
    model = module.TritonPythonModel()
    model.initialize(
        {"model_config": json.dumps(config), "model_repository": str(root), "model_version": "1"}
    )
    return model
