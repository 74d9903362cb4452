"""Tracking cost, end to end: 3 params and N metric steps, recorded four ways.

1. nixrepro without a tracker: `nixrepro run -- python train.py` (nixrepro.params / nixrepro.log);
2. nixrepro with W&B offline ([tracker] kind = "wandb", mode = "offline");
3. a plain script with wandb offline (wandb.init, N wandb.log calls, finish);
4. a plain script with MLflow and its default local store (start_run, log_params, N log_metric).

Targets (issue #6): (1) at least 4x faster than both (3) and (4); (2) no slower than (3) + 0.3 s.
Prints medians and ratios.

    .venv/bin/python bench/tracking.py [--steps 1000] [--repeat 5]
MLFLOW_PYTHON names an interpreter with mlflow installed (mlflow is not a dependency of
nixrepro); without one the MLflow row is skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import offline_nix, timed

from tests.helpers import git_commit, make_project

NIXREPRO_SCRIPT = """\
import nixrepro
params = nixrepro.params()
for step in range({steps}):
    nixrepro.log({{"loss": 1.0 / (step + 1), "acc": step / {steps}}}, step=step)
"""
WANDB_SCRIPT = """\
import wandb
run = wandb.init(project="bench", mode="offline", config={{"lr": 0.1, "epochs": 3, "model": "mlp"}})
for step in range({steps}):
    wandb.log({{"loss": 1.0 / (step + 1), "acc": step / {steps}}}, step=step)
run.finish()
"""
MLFLOW_SCRIPT = """\
import mlflow
with mlflow.start_run():
    mlflow.log_params({{"lr": 0.1, "epochs": 3, "model": "mlp"}})
    for step in range({steps}):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metric("acc", step / {steps}, step=step)
"""
TRACKER = '[tracker]\nkind = "wandb"\nproject = "bench"\nmode = "offline"\n'


def mlflow_python() -> str | None:
    candidate = os.environ.get("MLFLOW_PYTHON")
    if candidate:
        return candidate
    probe = subprocess.run([sys.executable, "-c", "import mlflow"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    offline_nix()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_SILENT="true", WANDB_MODE="offline")
    params = ["-p", "lr=0.1", "-p", "epochs=3", "-p", "model=mlp"]
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-tracking-") as tmp_name:
        tmp = Path(tmp_name)
        project = make_project(tmp, label="benchtrack")
        env_path = project.build_env()
        (project.root / "train.py").write_text(NIXREPRO_SCRIPT.format(steps=args.steps))
        (project.root / ".gitignore").write_text("wandb/\nmlruns/\n")
        git_commit(project.root, "bench")
        run = [sys.executable, "-m", "nixrepro", "run", "--env", env_path, *params, "--",
               sys.executable, "train.py"]
        plain = timed(run, project.root, args.repeat, env)

        (project.root / "nixrepro.toml").write_text(TRACKER)
        git_commit(project.root, "tracker")
        with_wandb = timed(run, project.root, args.repeat, env)

        scripts = tmp / "scripts"
        scripts.mkdir()
        (scripts / "wandb_plain.py").write_text(WANDB_SCRIPT.format(steps=args.steps))
        wandb_plain = timed([sys.executable, "wandb_plain.py"], scripts, args.repeat, env)

        mlflow = mlflow_python()
        mlflow_time = None
        if mlflow:
            (scripts / "mlflow_plain.py").write_text(MLFLOW_SCRIPT.format(steps=args.steps))
            mlflow_time = timed([mlflow, "mlflow_plain.py"], scripts, args.repeat, env)
        shutil.rmtree(scripts / "wandb", ignore_errors=True)

    print(f"3 params, {args.steps} metric steps; median of {args.repeat}, end to end")
    print(f"  nixrepro run, no tracker           {plain:7.3f} s")
    print(f"  nixrepro run, W&B offline          {with_wandb:7.3f} s")
    print(f"  plain wandb offline script         {wandb_plain:7.3f} s")
    if mlflow_time is not None:
        print(f"  plain MLflow script (local store)  {mlflow_time:7.3f} s")
    else:
        print("  plain MLflow script: skipped (set MLFLOW_PYTHON to an interpreter with mlflow)")
    print(f"no tracker vs wandb offline: {wandb_plain / plain:.1f}x faster (target >= 4x)")
    if mlflow_time is not None:
        print(f"no tracker vs MLflow:        {mlflow_time / plain:.1f}x faster (target >= 4x)")
    print(f"W&B offline through nixrepro - plain wandb: {with_wandb - wandb_plain:+.3f} s (target <= +0.3 s)")


if __name__ == "__main__":
    main()
