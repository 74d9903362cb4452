"""How long a fully cached 3-stage pipeline takes to decide "nothing to do".

nixrepro (`pipeline run`: the env's out path and closure hash, from nix or from the caches kept
for an unchanged commit (nixrepro/pipeline/envcache.py), then the stage cache) against `dvc repro`
on the equivalent dvc.yaml (DVC_BIN, or dvc installed into the bench-only environment
.cache/bench-venv on first use). `pipeline status` is measured in the same rounds, beside
`python -c pass` and one `nix build --no-link .#env` of the env (what each status and each run
paid before the env's out path was kept).
Target (issue #7): under 1 s, and faster than dvc repro. Prints medians and the ratio.

    .venv/bin/python bench/pipeline.py [--repeat 9]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import bench_tool, offline_nix, timed, timed_together

from tests.helpers import git_commit, make_project, sh

STAGES = ("prepare", "train", "evaluate")
TOML = """[run]
flake = ".#env"
""" + "".join(
    f'\n[stages.{name}]\ncmd = "sh {name}.sh"\ndeps = ["{name}.sh"]\n'
    + (f'after = ["{prev}"]\n' if prev else "")
    for prev, name in zip((None, *STAGES), STAGES, strict=False)
)
DVC_YAML = "stages:\n" + "".join(
    f"  {name}:\n    cmd: sh {name}.sh\n    deps:\n      - {name}.sh\n"
    + (f"      - out/{prev}.txt\n" if prev else "")
    + f"    outs:\n      - out/{name}.txt\n"
    for prev, name in zip((None, *STAGES), STAGES, strict=False)
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    offline_nix()
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-") as tmp:
        project = make_project(Path(tmp), label="benchpipe")
        for name in STAGES:
            (project.root / f"{name}.sh").write_text(f"mkdir -p out; echo {name} > out/{name}.txt\n")
        (project.root / "nixrepro.toml").write_text(TOML)
        (project.root / ".gitignore").write_text("out/\n")
        git_commit(project.root, "pipeline")
        nixrepro = [sys.executable, "-m", "nixrepro", "pipeline", "run"]
        subprocess.run(nixrepro, cwd=project.root, check=True, capture_output=True)
        rounds = timed_together({
            "run": nixrepro,
            "status": [sys.executable, "-m", "nixrepro", "pipeline", "status"],
            "python": [sys.executable, "-c", "pass"],
            "nix build": ["nix", "build", "--no-link", "--json", ".#env"],
        }, project.root, args.repeat)
        ours = rounds["run"]
        print(f"nixrepro pipeline run, all 3 stages cached: {ours:.3f} s  (target < 1 s)")
        print(f"nixrepro pipeline status, same rounds:      {rounds['status']:.3f} s  "
              f"(python -c pass {rounds['python']:.3f} s; nix build .#env {rounds['nix build']:.3f} s)")

        dvc = os.environ.get("DVC_BIN") or bench_tool("dvc", ["dvc[s3]"])
        theirs_dir = Path(tmp) / "dvc"
        theirs_dir.mkdir()
        sh(["git", "init", "-q"], cwd=theirs_dir)
        for name in STAGES:
            (theirs_dir / f"{name}.sh").write_text(f"mkdir -p out; echo {name} > out/{name}.txt\n")
        (theirs_dir / "dvc.yaml").write_text(DVC_YAML)
        subprocess.run([dvc, "init", "-q"], cwd=theirs_dir, check=True)
        subprocess.run([dvc, "config", "core.analytics", "false"], cwd=theirs_dir, check=True)
        subprocess.run([dvc, "repro"], cwd=theirs_dir, check=True, capture_output=True)
        git_commit(theirs_dir, "dvc")
        theirs = timed([dvc, "repro"], theirs_dir, args.repeat)
        print(f"dvc repro, all 3 stages cached:             {theirs:.3f} s")
        print(f"ratio nixrepro / dvc: {ours / theirs:.2f}  (target < 1)")


if __name__ == "__main__":
    main()
