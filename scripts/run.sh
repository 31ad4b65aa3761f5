#!/usr/bin/env bash
# The main job on one machine: install, build what is missing, then the gateway on 127.0.0.1:8000 with a
# local Triton (python backend, ONNX Runtime), local Qdrant and in-process jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/embedfleet serve "$@"
