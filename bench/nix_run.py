"""What `nix run .#experiment` (lib.mkExperiment) adds over `nix run` of a plain app with the same env.

A project made from the minimal template as the quick start makes it (tests/test_flake.py's
helpers: nixpkgs is tests/fixtures/nixpkgs-standin, whose python3 and numpy are a real closure),
plus a second app, `plain`, that runs the same command in the same env without nixrepro. Both are
evaluated and built once, then run interleaved round by round with the same arguments; the
experiment's own work cancels out, so the difference is what recording costs: the facts check,
the closure, the record. `python -c pass` and `python -c "import click"` run in the same rounds:
the interpreter's start and a click CLI's, which any Python recorder adds. Target (issue #16):
<= 0.15 s.

    .venv/bin/python bench/nix_run.py [--repeat 11]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import offline_nix

from tests.helpers import GIT_ID, git_commit
from tests.test_flake import make_inputs, new_project

# `apps.${system}.experiment = mkExperiment {...};` becomes `apps.${system} = { plain = ...;
# experiment = mkExperiment {...}; };`: the same command in the same env, without nixrepro
EXPERIMENT = "      apps.${system}.experiment = nixrepro.lib.mkExperiment {"
PLAIN_APP = """      apps.${system} = {
        plain = {
          type = "app";
          program = "${pkgs.writeShellScript "plain" "exec ${env}/bin/python ${self}/train.py \\"$@\\""}";
        };
        experiment = nixrepro.lib.mkExperiment {"""
END = '        command = "${env}/bin/python ${self}/train.py";\n      };\n'
ARGS = ["--", "--epochs", "1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="make the project in DIR and keep it")
    args = parser.parse_args()
    offline_nix()
    if args.keep:
        args.keep.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-nixrun-") as tmp:
        base = args.keep or Path(tmp)
        registry = base / "registry.json"  # no download of the default registry (it is on GitHub)
        registry.write_text('{"flakes": [], "version": 2}')
        os.environ.update({**GIT_ID, "XDG_CONFIG_HOME": str(base / "config"),
                           "NIX_CONFIG": os.environ["NIX_CONFIG"] + f"\nflake-registry = {registry}"})
        project = new_project(base, make_inputs(base / "inputs"))
        flake = project / "flake.nix"
        text = flake.read_text()
        assert EXPERIMENT in text and END in text, "the minimal template's apps changed: adapt PLAIN_APP"
        flake.write_text(text.replace(EXPERIMENT, PLAIN_APP).replace(END, END + "      };\n"))
        git_commit(project, "a plain app beside the experiment")
        commands = {"plain": ["nix", "run", ".#plain", *ARGS],
                    "experiment": ["nix", "run", ".#experiment", *ARGS],
                    "python": [sys.executable, "-c", "pass"],
                    "click": [sys.executable, "-c", "import click"]}
        for argv in commands.values():  # evaluated and built once: the rounds time the runs
            first = subprocess.run(argv, cwd=project, capture_output=True, text=True)
            if first.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed: {first.stderr.strip()[-2000:]}")
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                start = time.perf_counter()
                subprocess.run(argv, cwd=project, check=True, capture_output=True)
                samples[name].append(time.perf_counter() - start)
        plain, experiment, python, click = (statistics.median(samples[name]) for name in commands)
        added = experiment - plain
        print(f"nix run, median of {args.repeat}, interleaved (seconds)")
        print(f"  nix run .#plain {' '.join(ARGS[1:])}       {plain:.3f}")
        print(f"  nix run .#experiment {' '.join(ARGS[1:])}  {experiment:.3f}")
        print(f"  python -c pass {python:.3f}, python -c 'import click' {click:.3f}")
        print(f"  added by nixrepro: {added:.3f} s ({experiment / plain:.2f}x; {added - click:.3f} s "
              "over a click CLI's start)  target <= 0.15 s: " + ("met" if added <= 0.15 else "NOT met"))
        runs = len(list((project / ".nixrepro" / "runs").iterdir()))
        assert runs == args.repeat + 1, f"{runs} runs recorded"  # every experiment run was recorded
    sys.stdout.flush()


if __name__ == "__main__":
    main()
