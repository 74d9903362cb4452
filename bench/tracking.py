"""Tracking cost, end to end: 3 params and N metric steps (two metrics each), recorded six ways.

1. nixrepro without a tracker: `nixrepro run -- python train.py` (nixrepro.params / nixrepro.log);
2. nixrepro with W&B offline ([trackers.wandb] mode = "offline");
3. a plain script with wandb offline (wandb.init, N wandb.log calls, finish): the peer of 2;
4. nixrepro with MLflow ([trackers.mlflow], a local sqlite store);
5. a plain script with MLflow's fluent API and the same kind of store (start_run, log_params,
   2N log_metric calls): the peer of 4, as most scripts log;
6. the same plain script sending every point in one MlflowClient.log_batch: the floor of 4.

Targets: (2) at most 0.15 s over (3) (issue #16); (1) at least 4x faster than (3) and (5) (issue
#6); (4) no slower than (5). The commands are interleaved round by round (this machine is noisy),
each run once untimed first (a new MLflow store creates its tables, ~3 s, once); MLflow's
telemetry is off for both sides. `python -c pass` is timed in the same rounds: how busy the machine
was. Prints medians, differences and ratios; ``--only wandb`` (rows 1-3) or ``--only mlflow``
(rows 1, 4-6) times one tracker's rows, in less time and with more rounds to the minute.

    .venv/bin/python bench/tracking.py [--steps 1000] [--repeat 5] [--only wandb|mlflow]

mlflow is not a dependency of nixrepro: when the interpreter running the benchmark has no mlflow
(the `test` extra installs it), mlflow-skinny, sqlalchemy and alembic are installed into a
bench-only virtual environment (.cache/bench-mlflow), which runs both MLflow rows.
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

from _common import ROOT, offline_nix

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
mlflow.set_tracking_uri("sqlite:///{store}")
mlflow.set_experiment("bench")
with mlflow.start_run():
    mlflow.log_params({{"lr": 0.1, "epochs": 3, "model": "mlp"}})
    for step in range({steps}):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_metric("acc", step / {steps}, step=step)
"""
MLFLOW_BATCH_SCRIPT = """\
import time
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
client = MlflowClient("sqlite:///{store}")
found = client.get_experiment_by_name("bench")
experiment = found.experiment_id if found else client.create_experiment("bench")
run = client.create_run(experiment)
now = int(time.time() * 1000)
client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in
                 {{"lr": 0.1, "epochs": 3, "model": "mlp"}}.items()],
                 metrics=[Metric(key, value, now, step) for step in range({steps}) for key, value in
                          (("loss", 1.0 / (step + 1)), ("acc", step / {steps}))])
client.set_terminated(run.info.run_id)
"""
WANDB_TRACKER = '[trackers.wandb]\nproject = "bench"\nmode = "offline"\n'
MLFLOW_TRACKER = '[trackers.mlflow]\ntracking_uri = "sqlite:///{store}"\nexperiment = "bench"\n'
MLFLOW_PACKAGES = ["mlflow-skinny", "sqlalchemy", "alembic"]


def mlflow_python() -> str:
    """An interpreter that imports mlflow (and, with PYTHONPATH=ROOT, nixrepro)."""
    probe = subprocess.run([sys.executable, "-c", "import mlflow"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable
    venv = ROOT / ".cache" / "bench-mlflow"
    python = venv / "bin" / "python"
    if subprocess.run([str(python), "-c", "import mlflow, click"], capture_output=True).returncode:
        print(f"installing {', '.join(MLFLOW_PACKAGES)} into {venv} (once)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        *MLFLOW_PACKAGES, "click>=8.1", "cryptography>=42"], check=True)
    return str(python)


def interleaved(commands: dict[str, tuple[list[str], Path]], repeat: int,
                env: dict[str, str]) -> dict[str, float]:
    """Median wall time of each command (argv, cwd), run once untimed and then ``repeat`` times,
    round by round, so that the machine's drifts hit every command alike."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeat + 1):
        for name, (argv, cwd) in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            if round_:
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def project_with(base: Path, label: str, script: str, tracker: str | None) -> tuple[Path, str]:
    project = make_project(base, label=label)
    env_path = project.build_env()
    (project.root / "train.py").write_text(script)
    if tracker is not None:
        (project.root / "nixrepro.toml").write_text(tracker)
    git_commit(project.root, "bench")
    return project.root, env_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=("wandb", "mlflow"), help="one tracker's rows")
    args = parser.parse_args()
    rows = {"wandb": args.only != "mlflow", "mlflow": args.only != "wandb"}
    offline_nix()
    mlflow = mlflow_python() if rows["mlflow"] else sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(WANDB_SILENT="true", WANDB_MODE="offline", MLFLOW_DISABLE_TELEMETRY="true",
               PYTHONPATH=str(ROOT))
    params = ["-p", "lr=0.1", "-p", "epochs=3", "-p", "model=mlp"]
    script = NIXREPRO_SCRIPT.format(steps=args.steps)
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-tracking-") as tmp_name:
        tmp = Path(tmp_name)
        stores = tmp / "stores"
        stores.mkdir()
        plain_root, plain_env = project_with(tmp / "plain", "benchplain", script, None)
        wandb_root, wandb_env = project_with(tmp / "wandb", "benchwandb", script, WANDB_TRACKER)
        mlflow_root, mlflow_env = project_with(
            tmp / "mlflow", "benchmlflow", script,
            MLFLOW_TRACKER.format(store=stores / "nixrepro.db"))
        scripts = tmp / "scripts"
        scripts.mkdir()
        (scripts / "wandb_plain.py").write_text(WANDB_SCRIPT.format(steps=args.steps))
        (scripts / "mlflow_plain.py").write_text(
            MLFLOW_SCRIPT.format(steps=args.steps, store=stores / "plain.db"))
        (scripts / "mlflow_batch.py").write_text(
            MLFLOW_BATCH_SCRIPT.format(steps=args.steps, store=stores / "batch.db"))

        def nixrepro(python: str, env_path: str, root: Path) -> tuple[list[str], Path]:
            return [python, "-m", "nixrepro", "run", "--env", env_path, *params, "--",
                    sys.executable, "train.py"], root

        commands = {
            "pass": ([sys.executable, "-c", "pass"], scripts),
            "plain": nixrepro(sys.executable, plain_env, plain_root),
        }
        if rows["wandb"]:
            commands["wandb"] = nixrepro(sys.executable, wandb_env, wandb_root)
            commands["wandb_plain"] = ([sys.executable, "wandb_plain.py"], scripts)
        if rows["mlflow"]:
            commands["mlflow"] = nixrepro(mlflow, mlflow_env, mlflow_root)
            commands["mlflow_plain"] = ([mlflow, "mlflow_plain.py"], scripts)
            commands["mlflow_batch"] = ([mlflow, "mlflow_batch.py"], scripts)
        t = interleaved(commands, args.repeat, env)

    print(f"3 params, {args.steps} steps of 2 metrics; median of {args.repeat}, end to end, "
          f"interleaved (load average {os.getloadavg()[0]:.1f})")
    print(f"  0 python -c pass                           {t['pass']:7.3f} s")
    print(f"  1 nixrepro run, no tracker                 {t['plain']:7.3f} s")
    if rows["wandb"]:
        print(f"  2 nixrepro run, W&B offline                {t['wandb']:7.3f} s")
        print(f"  3 plain wandb offline script               {t['wandb_plain']:7.3f} s")
    if rows["mlflow"]:
        print(f"  4 nixrepro run, MLflow (sqlite)            {t['mlflow']:7.3f} s")
        print(f"  5 plain MLflow script, log_metric a point  {t['mlflow_plain']:7.3f} s")
        print(f"  6 plain MLflow script, one log_batch       {t['mlflow_batch']:7.3f} s")
    if rows["wandb"]:
        print(f"W&B through nixrepro vs plain wandb (2 - 3):  {t['wandb'] - t['wandb_plain']:+.3f} s, "
              f"{t['wandb'] / t['wandb_plain']:.2f}x (target <= +0.150 s)")
    if rows["mlflow"]:
        print(f"MLflow through nixrepro vs plain (4 - 5):     {t['mlflow'] - t['mlflow_plain']:+.3f} s, "
              f"{t['mlflow'] / t['mlflow_plain']:.2f}x (target <= 1.00x)")
        print(f"MLflow through nixrepro vs its floor (4 - 6): {t['mlflow'] - t['mlflow_batch']:+.3f} s, "
              f"{t['mlflow'] / t['mlflow_batch']:.2f}x")
    if rows["wandb"]:
        print(f"no tracker vs plain wandb:  {t['wandb_plain'] / t['plain']:.1f}x faster (target >= 4x)")
    if rows["mlflow"]:
        print(f"no tracker vs plain MLflow: {t['mlflow_plain'] / t['plain']:.1f}x faster (target >= 4x)")


if __name__ == "__main__":
    main()
