#!/usr/bin/env bash
# Records two runs of a small experiment with different params, lists and compares them, then
# changes the env's numpy (1.26.4 -> 2.2.6), records a third run and compares that.
# Run after `bash scripts/setup.sh`. Works offline: the flake inputs are local git repositories
# (a copy of this checkout: nixrepro, and tests/fixtures/nixpkgs-standin as nixpkgs).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
nixrepro="$here/.venv/bin/nixrepro"
export NIX_CONFIG="${NIX_CONFIG:-experimental-features = nix-command flakes
substituters =
build-users-group =}"
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.invalid
work="$(mktemp -d /tmp/nixrepro-demo.XXXXXX)"
echo "== demo project in $work"

# this checkout's files, as a flake fetched from GitHub would hold them (not .venv, not .cache)
mkdir "$work/nixrepro" && cd "$here"
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$work/nixrepro" -xf -
cd "$work/nixrepro"
sed -i "s|@PYTHON@|$here/.venv/bin/python|" tests/fixtures/nixpkgs-standin/default.nix
git init -q -b main && git add -A && git commit -qm nixrepro

mkdir "$work/project" && cd "$work/project" && git init -q -b main
system="$("$here/.venv/bin/python" -c 'from nixrepro.runner import nix_system; print(nix_system())')"
sed -e "s|@NIXREPRO@|$work/nixrepro|g" -e "s|@SYSTEM@|$system|g" "$here/examples/demo/flake.nix.in" > flake.nix
cp "$here/examples/demo/train.py" .
git add -A
nix flake lock
git add -A
git commit -qm "demo experiment"

store="file://$work/store"  # the embedded default store: a directory, versioned
"$here/.venv/bin/python" - "$work/points.csv" <<'POINTS'
import random, sys
rng = random.Random(7)
rows = [f"{rng.gauss(-1, 1):.4f},{rng.gauss(-1, 1):.4f},0" for _ in range(200)]
rows += [f"{rng.gauss(1, 1):.4f},{rng.gauss(1, 1):.4f},1" for _ in range(200)]
open(sys.argv[1], "w").write("\n".join(rows) + "\n")
POINTS
echo "== nixrepro data put points.csv $store/points.csv"
"$nixrepro" data put "$work/points.csv" "$store/points.csv"

echo "== nixrepro run -p lr=0.5"
"$nixrepro" run --flake .#env --name slow -p lr=0.5 --seed 1 -- python train.py "$store/points.csv" "$store/model.json"
echo "== nixrepro run -p lr=2.0"
"$nixrepro" run --flake .#env --name fast -p lr=2.0 --seed 1 -- python train.py "$store/points.csv" "$store/model.json"
echo "== nixrepro runs"
"$nixrepro" runs
echo "== nixrepro show @latest"
"$nixrepro" show @latest
echo "== nixrepro diff @latest~1 @latest"
"$nixrepro" diff @latest~1 @latest
echo "== the env's numpy 1.26.4 -> 2.2.6 (ps.numpy_1 -> ps.numpy_2 in flake.nix), committed"
sed -i "s|ps.numpy_1|ps.numpy_2|" flake.nix
git commit -qam "numpy 2"
echo "== nixrepro run -p lr=2.0 (numpy 2)"
"$nixrepro" run --flake .#env --name fast-numpy2 -p lr=2.0 --seed 1 -- python train.py "$store/points.csv" "$store/model.json"
echo "== nixrepro diff @latest~1 @latest"
"$nixrepro" diff @latest~1 @latest
echo "== nixrepro verify @latest --contents"
"$nixrepro" verify @latest --contents
echo "== nixrepro lineage $store/model.json"
"$nixrepro" lineage "$store/model.json"
echo "== nixrepro report @latest~2 @latest~1 @latest -o $work/report.html"
"$nixrepro" report @latest~2 @latest~1 @latest -o "$work/report.html"
echo "   one offline HTML file: the three runs, their curves and their diff; \`nixrepro ui\` in"
echo "   $work/project serves the same pages at http://127.0.0.1:8765"
