"""Added wall time of `nixrepro run -- true` over running `true` directly.

For env closures of ~20 and ~2,000 store paths. Prints medians and ratios, and the baseline
`nix path-info -r --json` on the same closure (the one nix call a run cannot avoid).
Target (issue #2): under 0.3 s added for 2,000 paths.

    .venv/bin/python bench/run_overhead.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import offline_nix, timed

from tests.helpers import make_project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    offline_nix()
    nixrepro = [sys.executable, "-m", "nixrepro"]
    true = shutil.which("true") or "/bin/true"
    print(f"{'closure':>8} {'true':>9} {'nixrepro run':>13} {'added':>8} {'ratio':>7} "
          f"{'path-info':>10}  target: added < 0.300 s at 2,000 paths")
    for extra in (19, 1999):
        with tempfile.TemporaryDirectory(prefix="nixrepro-bench-") as tmp:
            project = make_project(Path(tmp), label=f"bench{extra}", extra_paths=extra)
            env = project.build_env()
            count = len(subprocess.run(["nix", "path-info", "-r", env], capture_output=True,
                                       text=True, check=True).stdout.split())
            base = timed([true], project.root, args.repeat)
            recorded = timed([*nixrepro, "run", "--env", env, "--", true], project.root, args.repeat)
            path_info = timed(["nix", "path-info", "-r", "--json", env], project.root, args.repeat)
            added = recorded - base
            print(f"{count:>8} {base:>8.4f}s {recorded:>12.4f}s {added:>7.3f}s "
                  f"{recorded / base:>6.0f}x {path_info:>9.4f}s")


if __name__ == "__main__":
    main()
