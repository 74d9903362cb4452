"""`nixrepro diff` of two runs with 2,000- and 20,000-path closures versus `nix store diff-closures`.

Both runs are recorded on real closures (the env plus N-1 text files); the second run bumps the
env's version (and its commit). nixrepro reads only the two records and shows more (code and the
commits between, inputs, rebuilt paths at the same version, params, metrics...); diff-closures
queries the store. Interleaved with them, the floor: a Python process that parses the two
record.json files and sorts their closures (what any diff of two recorded closures must do).
Targets (issue #16): ratio to diff-closures <= 0.5 at 2,000 paths; 20,000 within 2x of 2,000.

    .venv/bin/python bench/diff.py [--repeat 15] [--sizes 2000,20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import offline_nix, timed_together

from tests.helpers import make_project, set_env

FLOOR = (
    "import json, sys\n"
    "a, b = (json.load(open(path)) for path in sys.argv[1:])\n"
    "sorted(p['path'] for p in a['environment']['closure'] + b['environment']['closure'])\n"
)


def record_run(root: Path) -> dict[str, object]:
    nixrepro = [sys.executable, "-m", "nixrepro"]
    subprocess.run([*nixrepro, "run", "--flake", ".#env", "--", "true"], cwd=root, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shown = subprocess.run([*nixrepro, "show", "@latest", "--json"], cwd=root, check=True,
                           capture_output=True, text=True).stdout
    return dict(json.loads(shown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sizes", default="2000,20000")
    args = parser.parse_args()
    offline_nix()
    print(f"median of {args.repeat}, interleaved (seconds)")
    print(f"{'closure':>8} {'diff-closures':>14} {'floor':>7} {'nixrepro diff':>14} {'--json':>7} "
          f"{'ratio':>6} {'json ratio':>10} {'vs floor':>9}  target")
    at: dict[int, float] = {}
    for paths in (int(size) for size in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="nixrepro-bench-") as tmp:
            os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")
            label = f"benchdiff{os.getpid()}x{paths}"
            project = make_project(Path(tmp), label=label, extra_paths=paths - 1)
            a = record_run(project.root)
            set_env(project, label=label, extra_paths=paths - 1, version="1.1")
            b = record_run(project.root)
            env_a, env_b = a["environment"], b["environment"]  # type: ignore[index]
            runs = project.root / ".nixrepro" / "runs"
            nixrepro = str(Path(sys.executable).parent / "nixrepro")  # the console script users run
            medians = timed_together({
                "nix": ["nix", "store", "diff-closures", env_a["env_path"], env_b["env_path"]],  # type: ignore[index]
                "floor": [sys.executable, "-c", FLOOR, str(runs / str(a["id"]) / "record.json"),
                          str(runs / str(b["id"]) / "record.json")],
                "ours": [nixrepro, "diff", str(a["id"]), str(b["id"])],
                "ours_json": [nixrepro, "diff", "--json", str(a["id"]), str(b["id"])],
            }, project.root, args.repeat)
            nix, ours = medians["nix"], medians["ours"]
            at[paths] = ours
            note = ("<= 0.5: " + ("met" if ours / nix <= 0.5 else "NOT met")) if paths == 2000 else \
                (f"within 2x of 2,000 paths: {ours / at[2000]:.2f}x" if 2000 in at else "")
            print(f"{paths:>8} {nix:>14.4f} {medians['floor']:>7.4f} {ours:>14.4f} "
                  f"{medians['ours_json']:>7.4f} {ours / nix:>6.2f} {medians['ours_json'] / nix:>10.2f} "
                  f"{ours / medians['floor']:>8.2f}x  {note}")


if __name__ == "__main__":
    main()
