"""`run --repeat N` and `--deterministic`, end to end on real git and Nix."""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import sys
from pathlib import Path

import pytest

from nixrepro.determinism import determinism_note, usable_cpus
from nixrepro.groups import new_group_id, resolve_group
from nixrepro.record import RunRecord
from nixrepro.runstore import RunStore
from tests.helpers import Project, cli_in_process, git_commit, sh

FIXTURE = Path(__file__).parent / "fixtures" / "record-minimal.json"

pytestmark = pytest.mark.nix

NOISY = """\
import random, sys
import nixrepro
seed = nixrepro.seed()
if seed == nixrepro.params().get("fail_on"):
    sys.exit(3)
random.seed(seed)
nixrepro.log({"loss": 0.3 + random.random() / 10, "label": "x"}, step=0)
"""


def load_records(project: Project) -> list[RunRecord]:
    if not project.runs_dir.exists():
        return []
    found = [RunRecord.from_dict(json.loads((d / "record.json").read_text()))
             for d in project.runs_dir.iterdir()]
    return sorted(found, key=lambda r: r.repeat_index or 0)


def with_script(project: Project, script: str) -> str:
    (project.root / "train.py").write_text(script)
    git_commit(project.root, "script")
    return project.build_env()


def test_repeat_records_a_group_with_derived_seeds_and_reports_mean_and_sem(project: Project) -> None:
    env_path = with_script(project, NOISY)
    result = project.nixrepro("run", "--env", env_path, "--repeat", "3", "--seed", "10", "--name", "base",
                              "--", sys.executable, "train.py")
    assert result.returncode == 0, result.stderr
    records = load_records(project)
    assert [(r.repeat_index, r.seed, r.status) for r in records] == [
        (0, 10, "succeeded"), (1, 11, "succeeded"), (2, 12, "succeeded")]
    group = records[0].group
    assert group is not None and re.fullmatch(r"g[0-9a-f]{24}", group)  # 96 bits, as a run id
    assert {r.group for r in records} == {group}
    assert f"nixrepro: group {group}: 3 of 3 runs; `nixrepro show {group[:9]}`" in result.stderr

    losses = [float(r.metrics["loss"]) for r in records]  # type: ignore[arg-type]
    mean, std = statistics.fmean(losses), statistics.stdev(losses)
    sem = std / math.sqrt(3)

    listing = project.nixrepro("runs").stdout.splitlines()
    assert len(listing) == 3  # header, the group's line, its metrics line
    assert listing[1].startswith(f"{group[:9]}  group x3")
    assert listing[2] == f"    loss {mean:.4g} ± {sem:.2g} (n=3)"

    shown = project.nixrepro("show", group[:5])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"group {group}  (base)"
    header = next(i for i, line in enumerate(lines) if line.startswith("METRIC"))
    assert lines[header].split() == ["METRIC", "MEAN", "STD", "SEM", "N", "MIN", "MAX"]
    assert lines[header + 1].split() == [
        "loss", f"{mean:.6g}", f"{std:.6g}", f"{sem:.6g}", "3", f"{min(losses):.6g}", f"{max(losses):.6g}"]
    doc = json.loads(project.nixrepro("show", group, "--json").stdout)
    assert doc["metrics"]["loss"]["n"] == 3
    assert doc["metrics"]["loss"]["sem"] == pytest.approx(sem)
    assert [run["seed"] for run in doc["runs"]] == [10, 11, 12]
    as_json = json.loads(project.nixrepro("runs", "--json").stdout)
    assert {(run["group"], run["repeat_index"]) for run in as_json} == {(group, 0), (group, 1), (group, 2)}


def test_the_first_failing_repeat_stops_the_group(project: Project) -> None:
    env_path = with_script(project, NOISY)
    result = project.nixrepro("run", "--env", env_path, "--repeat", "4", "-p", "fail_on=1",
                              "--", sys.executable, "train.py")
    records = load_records(project)
    assert result.returncode == 3
    assert [(r.seed, r.status) for r in records] == [(0, "succeeded"), (1, "failed")]
    listing = project.nixrepro("runs").stdout.splitlines()
    assert "group x2 (1 succeeded, 1 failed)" in listing[1]
    assert listing[2].endswith("(n=1)")  # statistics only over the succeeded run


def test_groups_of_the_former_12_digit_ids_read_list_and_resolve_beside_new_ones(tmp_path: Path) -> None:
    sh(["git", "init", "-q", "-b", "main"], cwd=tmp_path)
    store = RunStore.for_repo(tmp_path)
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    old, new = "g0123456789ab", new_group_id()
    assert re.fullmatch(r"g[0-9a-f]{24}", new) and new != new_group_id()
    for i, group in enumerate([old, old, new, new]):
        run_id, _ = store.new_run_dir()
        store.save(base.replace(id=run_id, group=group, repeat_index=i % 2, seed=i, metrics={"loss": i},
                                started_at=f"2026-11-22T13:0{i}:00+00:00"))
    assert resolve_group(store, old[:6]).id == old and len(resolve_group(store, new[:6]).runs) == 2
    listing = cli_in_process(["runs"], tmp_path).stdout.splitlines()
    assert [line[:9] for line in listing[1::2]] == [new[:9], old[:9]]  # each group one line
    shown = cli_in_process(["show", old, "--json"], tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["group"] == old


def test_unknown_group_is_a_usage_error(project: Project) -> None:
    result = project.nixrepro("show", "g0000")
    assert result.returncode == 2
    assert result.stderr == (f"Error: no repeat group matches 'g0000' in {project.root / '.nixrepro'}; "
                             "`nixrepro runs` lists them.\n")


SHOW_ENV = """\
import json, os, random
import nixrepro
names = ["PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
         "OPENBLAS_NUM_THREADS", "NIXREPRO_DETERMINISTIC"]
print(json.dumps({n: os.environ.get(n) for n in names}))
if nixrepro.params().get("seed_everything"):
    used = nixrepro.seed_everything()
    print(used, random.random())
"""


def test_deterministic_sets_records_and_applies_the_switch(project: Project) -> None:
    env_path = with_script(project, SHOW_ENV)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["MKL_NUM_THREADS"] = "3"  # the user's own choice is kept
    result = project.nixrepro("run", "--env", env_path, "--deterministic", "-p", "seed_everything=true",
                              "--", sys.executable, "train.py", env=env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[0])
    cpus = str(usable_cpus())
    expected = {"PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": cpus,
                "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": cpus, "NIXREPRO_DETERMINISTIC": "1"}
    assert seen == expected
    import random

    random.seed(0)
    assert result.stdout.splitlines()[1] == f"0 {random.random()}"  # seeded from the run's seed 0
    (record,) = load_records(project)
    assert record.deterministic is True
    assert record.seed == 0
    assert {k: record.env_vars[k] for k in expected} == expected
    assert record.seeded is not None and record.seeded.seed == 0
    assert record.seeded.libraries[0] == "random"
    assert determinism_note(record) is None
    assert "seed       0, deterministic" in project.nixrepro("show", record.id).stdout


def test_determinism_note_says_when_a_run_was_not_deterministic(project: Project) -> None:
    env_path = with_script(project, SHOW_ENV)
    assert project.nixrepro("run", "--env", env_path, "--seed", "5", "--", sys.executable,
                            "train.py").returncode == 0
    assert project.nixrepro("run", "--env", env_path, "--seed", "5", "--deterministic", "--",
                            sys.executable, "train.py").returncode == 0
    plain, no_seeding = sorted(load_records(project), key=lambda r: r.deterministic)
    assert plain.env_vars.get("CUBLAS_WORKSPACE_CONFIG") is None
    assert determinism_note(plain) == (
        f"run {plain.short_id} was not deterministic (recorded without --deterministic), so part of "
        "a difference in its metrics may be chance; compare repeats (--repeat N) instead.")
    assert no_seeding.env_vars["PYTHONHASHSEED"] == "5"
    assert determinism_note(no_seeding) == (
        f"run {no_seeding.short_id} ran with --deterministic but never called "
        "nixrepro.seed_everything(), so nixrepro did not seed random, numpy or torch in it.")


SHIFTED = NOISY.replace("0.3 +", "0.3 + nixrepro.params().get('shift', 0) +")


def group_of(project: Project, *args: str) -> str:
    before = {r.id for r in load_records(project)}
    result = project.nixrepro("run", "--flake", ".#env", *args, "--", sys.executable, "train.py")
    assert result.returncode == 0, result.stderr
    (group,) = {r.group for r in load_records(project) if r.id not in before}
    assert group is not None
    return group


def test_diff_of_two_groups_says_which_differences_are_within_noise(project: Project) -> None:
    with_script(project, SHIFTED)
    base = group_of(project, "--repeat", "4", "--seed", "0")
    same = group_of(project, "--repeat", "4", "--seed", "100")
    better = group_of(project, "--repeat", "4", "--seed", "200", "-p", "shift=-0.5")

    noise = project.nixrepro("diff", base[:9], same[:9])
    assert noise.returncode == 0, noise.stderr
    assert noise.stdout.splitlines()[:2] == [f"A = group {base[:9]} (4 of 4 runs succeeded)",
                                             f"B = group {same[:9]} (4 of 4 runs succeeded)"]
    loss_row = next(line for line in noise.stdout.splitlines() if line.startswith("loss"))
    assert "within noise" in loss_row

    real = json.loads(project.nixrepro("diff", base, better, "--json").stdout)
    loss = real["metrics"]["loss"]
    assert (real["a"], real["b"]) == (base, better)
    assert loss["within_noise"] is False and loss["p_value"] < 0.05
    assert loss["difference"] == pytest.approx(loss["b"]["mean"] - loss["a"]["mean"])
    assert -0.6 < loss["difference"] < -0.4


def test_diff_of_a_run_and_a_group_is_a_usage_error(project: Project) -> None:
    with_script(project, NOISY)
    group = group_of(project, "--repeat", "2")
    run_id = load_records(project)[0].id
    result = project.nixrepro("diff", run_id, group)
    assert result.returncode == 2
    assert result.stderr == (f"Error: cannot compare a run with a repeat group ({run_id} and {group}); "
                             "give two runs or two groups.\n")


def test_diff_of_runs_notes_a_run_that_was_not_deterministic(project: Project) -> None:
    with_script(project, SHIFTED)
    for shift in ("0", "1"):
        assert project.nixrepro("run", "--flake", ".#env", "--seed", "1", "-p", f"shift={shift}", "--",
                                sys.executable, "train.py").returncode == 0
    old, new = sorted(load_records(project), key=lambda r: r.started_at)
    shown = project.nixrepro("diff", old.id, new.id)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1].startswith("note: neither run was recorded with --deterministic")
    assert project.nixrepro("run", "--flake", ".#env", "--seed", "1", "--deterministic", "-p", "shift=2",
                            "--", sys.executable, "train.py").returncode == 0
    (newest,) = [r for r in load_records(project) if r.deterministic]
    one_sided = project.nixrepro("diff", old.id, newest.id).stdout.splitlines()
    assert one_sided[-2:] == [f"note: {determinism_note(old)}", f"note: {determinism_note(newest)}"]
    doc = json.loads(project.nixrepro("diff", old.id, new.id, "--json").stdout)
    assert doc["determinism"] == [determinism_note(old), determinism_note(new)]
