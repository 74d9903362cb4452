#!/usr/bin/env bash
# Installs what nixrepro needs on a fresh Debian 12 machine (as root): Nix, git, a venv with nixrepro,
# and the Python packages of the demo's and the tests' environment (real PyPI wheels, into the store).
#   bash scripts/setup.sh          # for the demo
#   bash scripts/setup.sh --test   # plus the test tools (pytest, ruff, mypy, SeaweedFS, jq)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v nix >/dev/null || need+=(nix-bin)
command -v git >/dev/null || need+=(git)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# the stand-in nixpkgs (tests/fixtures/nixpkgs-standin/python) patches the host's python3.11 into
# the store with it
command -v patchelf >/dev/null || need+=(patchelf)
[ -x /usr/bin/python3.11 ] || need+=(python3.11)
# the tests run the README's closure-hash recomputation, a jq program
if [ "${1:-}" = "--test" ] && ! command -v jq >/dev/null; then need+=(jq); fi
# the web viewer's tests load its pages in a real headless browser (tests/test_ui.py)
if [ "${1:-}" = "--test" ]; then command -v chromium >/dev/null || need+=(chromium); fi
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

# The wheels the stand-in nixpkgs installs (tests/fixtures/nixpkgs-standin/python/wheels.json):
# fetched once into .cache/wheels by pip, checked against their sha256 and added to the Nix store
# at the path of their fixed-output derivation, so no build downloads anything.
.venv/bin/python - <<'WHEELS'
import hashlib, json, os, subprocess, sys
from pathlib import Path

cache = Path(".cache/wheels")
for spec in json.loads(Path("tests/fixtures/nixpkgs-standin/python/wheels.json").read_text()):
    file, sha256 = spec["file"], spec["sha256"]
    stored = subprocess.run(["nix-store", "--print-fixed-path", "sha256", sha256, file],
                            capture_output=True, text=True, check=True).stdout.strip()
    if os.path.exists(stored):
        continue
    wheel = cache / file
    if not wheel.is_file() or hashlib.sha256(wheel.read_bytes()).hexdigest() != sha256:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                        "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
                        "--implementation", "cp", "--abi", "cp311", "--platform", "manylinux2014_x86_64",
                        "-d", str(cache), f"{spec['pname']}=={spec['version']}"], check=True)
    got = hashlib.sha256(wheel.read_bytes()).hexdigest() if wheel.is_file() else "no such file"
    if got != sha256:
        sys.exit(f"{wheel}: sha256 {got}, not the pinned {sha256}")
    subprocess.run(["nix-store", "--add-fixed", "sha256", str(wheel)], check=True, stdout=subprocess.DEVNULL)
WHEELS
