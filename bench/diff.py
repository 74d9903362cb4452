"""`nixrepro diff` of two runs with ~2,000-path closures versus `nix store diff-closures`.

Both runs are recorded on real closures (the env plus 1,999 text files); the second run bumps the
env's version. nixrepro reads only the two records and shows more (code, inputs, rebuilt paths at
the same version, params, metrics...); diff-closures queries the store. Prints medians and the
ratio. Target (issue #4): ratio below 1.

    .venv/bin/python bench/diff.py [--repeat 15]
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
    args = parser.parse_args()
    offline_nix()
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-") as tmp:
        label = f"benchdiff{os.getpid()}"
        project = make_project(Path(tmp), label=label, extra_paths=1999)
        a = record_run(project.root)
        set_env(project, label=label, extra_paths=1999, version="1.1")
        b = record_run(project.root)
        env_a, env_b = a["environment"], b["environment"]  # type: ignore[index]
        paths = len(env_b["closure"])  # type: ignore[index]
        nixrepro = str(Path(sys.executable).parent / "nixrepro")  # the console script users run
        medians = timed_together({
            "nix": ["nix", "store", "diff-closures", env_a["env_path"], env_b["env_path"]],  # type: ignore[index]
            "ours": [nixrepro, "diff", str(a["id"]), str(b["id"])],
            "ours_json": [nixrepro, "diff", "--json", str(a["id"]), str(b["id"])],
        }, project.root, args.repeat)
        nix, ours, ours_json = medians["nix"], medians["ours"], medians["ours_json"]
        print(f"closures of {paths} paths, median of {args.repeat} runs")
        print(f"  nix store diff-closures   {nix:.4f} s")
        print(f"  nixrepro diff             {ours:.4f} s   ratio {ours / nix:.2f}")
        print(f"  nixrepro diff --json      {ours_json:.4f} s   ratio {ours_json / nix:.2f}")
        print("target: ratio below 1")


if __name__ == "__main__":
    main()
