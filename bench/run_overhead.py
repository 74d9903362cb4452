"""Added wall time of `nixrepro run --env E -- true` over running `true` directly.

For env closures of 20, 2,000 and 20,000 store paths. Each round runs, interleaved: `true`,
`python -c pass` (the interpreter's own start, the floor of any Python CLI), `python -c "import
click"` (the floor of a click CLI), `imports` (a process that imports the run path's modules as
`nixrepro run` does, and runs nothing), `nix path-info -r --json E` (what recording a closure cost
before the closure cache) and the recorded run. The first
run of an environment asks nix for its closure (`cold`); the next ones read it from the cache. No
signing key (an empty XDG_CONFIG_HOME), a cache of the benchmark's own (XDG_CACHE_HOME).
Targets (issue #16): added <= 0.12 s at 20 paths, <= 0.20 s at 2,000; 20,000 within 2x of 2,000.

    .venv/bin/python bench/run_overhead.py [--repeat 15] [--sizes 20,2000,20000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import offline_nix

from tests.helpers import make_project

TARGETS = {20: 0.12, 2000: 0.20}
# what `nixrepro run` imports before it starts the command, as it imports it (cli/run.py's run:
# the collector paused, then frozen)
RUN_PATH = ("import gc; gc.disable(); import nixrepro.cli, nixrepro.cli.run, nixrepro.config, "
            "nixrepro.trackers, nixrepro.runner; gc.freeze()")


def once(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sizes", default="20,2000,20000")
    args = parser.parse_args()
    offline_nix()
    nixrepro = [str(Path(sys.executable).parent / "nixrepro")]  # the console script users run
    true = shutil.which("true") or "/bin/true"
    print(f"median of {args.repeat}, interleaved (seconds)")
    print(f"{'closure':>8} {'true':>7} {'python':>7} {'click':>7} {'imports':>8} {'path-info':>10} "
          f"{'run cold':>9} {'run':>7} {'added':>7}  {'added - python':>14} {'added - click':>14}  target")
    added_at: dict[int, float] = {}
    for paths in (int(size) for size in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="nixrepro-bench-") as tmp:
            os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # no signing key
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")  # a cold closure cache
            project = make_project(Path(tmp), label=f"bench{paths}", extra_paths=paths - 1)
            env = project.build_env()
            run = [*nixrepro, "run", "--env", env, "--", true]
            cold = once(run, project.root)
            commands = {"true": [true], "python": [sys.executable, "-c", "pass"],
                        "click": [sys.executable, "-c", "import click"],
                        "imports": [sys.executable, "-c", RUN_PATH],
                        "path-info": ["nix", "path-info", "-r", "--json", env], "run": run}
            samples: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.repeat):
                for name, argv in commands.items():
                    samples[name].append(once(argv, project.root))
            median = {name: statistics.median(values) for name, values in samples.items()}
            added = median["run"] - median["true"]
            added_at[paths] = added
            target = TARGETS.get(paths)
            if target is not None:
                note = f"<= {target:.2f} s: {'met' if added <= target else 'NOT met'}"
            elif 2000 in added_at:
                note = f"within 2x of 2,000 paths: {added / added_at[2000]:.2f}x"
            else:
                note = ""
            print(f"{paths:>8} {median['true']:>7.4f} {median['python']:>7.4f} {median['click']:>7.4f} "
                  f"{median['imports']:>8.4f} {median['path-info']:>10.4f} {cold:>9.3f} "
                  f"{median['run']:>7.3f} {added:>7.3f}  "
                  f"{added - median['python']:>14.3f} {added - median['click']:>14.3f}  {note}")


if __name__ == "__main__":
    main()
