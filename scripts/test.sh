#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs (venv, torch CPU, apt services),
# builds the model repository (idempotent), lints and type-checks, then runs unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/embedfleet build all
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy services gateway trt_build cli
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
