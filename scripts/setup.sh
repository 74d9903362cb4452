#!/usr/bin/env bash
# Installs what nixrepro needs on a fresh Debian 12 machine (as root): Nix, git, a venv with nixrepro.
#   bash scripts/setup.sh          # for the demo
#   bash scripts/setup.sh --test   # plus the test tools (pytest, ruff, mypy, SeaweedFS, jq)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nix >/dev/null || need+=(nix-bin)
command -v git >/dev/null || need+=(git)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# the tests run the README's closure-hash recomputation, a jq program
if [ "${1:-}" = "--test" ] && ! command -v jq >/dev/null; then need+=(jq); fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
# compat mode: a plain path entry in a .pth, not an import hook that costs every start-up ~10 ms
.venv/bin/python -m pip install -q --disable-pip-version-check --config-settings editable_mode=compat -e ".${extra}"
