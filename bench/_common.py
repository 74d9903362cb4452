"""What every benchmark here shares: the tests' offline Nix settings and a median timer.

Benchmarks print medians and ratios against a baseline measured in the same run: the machines
they run on are noisy, so only ratios compare across runs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the benchmarks build their projects with the tests' helpers

from tests.helpers import NIX_CONFIG  # noqa: E402

BENCH_VENV = ROOT / ".cache" / "bench-venv"  # the peers' own environment (git-ignored)


def offline_nix() -> None:
    """Flakes on, no substituters: the settings the tests use (unless the caller set its own).
    Every benchmark that starts nix or nixrepro calls it, so it also compiles the bytecode."""
    os.environ.setdefault("NIX_CONFIG", NIX_CONFIG)
    compile_bytecode()


def compile_bytecode() -> None:
    """nixrepro's bytecode, as installing a package compiles it: a checkout used with
    PYTHONDONTWRITEBYTECODE=1 would otherwise recompile every module in every timed process."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "nixrepro")], env=env,
                   check=True, stdout=subprocess.DEVNULL)


def timed(argv: list[str], cwd: Path, repeat: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of running ``argv`` ``repeat`` times (output discarded, failure raises)."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def timed_together(commands: dict[str, list[str]], cwd: Path, repeat: int) -> dict[str, float]:
    """Median wall time of each command, the commands interleaved round by round, so that the
    machine's drifts (these machines are noisy) hit every command alike."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_tool(name: str, requirements: list[str]) -> str:
    """The executable ``name`` of a peer the benchmarks compare against (dvc, mlflow), from a
    bench-only virtual environment that pip fills on first use: never a dependency of nixrepro,
    and never a figure printed without its peer."""
    binary = BENCH_VENV / "bin" / name
    if not binary.exists():
        if not (BENCH_VENV / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        print(f"(installing {' '.join(requirements)} into {BENCH_VENV} for the comparison)", flush=True)
        subprocess.run([str(BENCH_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
                       check=True)
    return str(binary)
