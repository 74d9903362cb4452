"""Data-linked pipelines: prepare -> train -> evaluate through versioned data, on file:// and S3.

Each stage reads its inputs (NIXREPRO_INPUTS) and writes its outputs; the cache key holds the
exact input versions, so a new version of the raw data reruns everything downstream of it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nixrepro.config import DataConfig
from nixrepro.datastore.ops import Data
from tests.helpers import Project, env_flake
from tests.s3server import store_base

pytestmark = pytest.mark.nix

STAGE = """\
import json, os, sys
from pathlib import Path
import nixrepro
name, source, target = sys.argv[1], sys.argv[2], sys.argv[3]
text = Path(json.loads(os.environ["NIXREPRO_INPUTS"])[source]).read_text()
scale = nixrepro.params().get("scale", 1)
Path("out").mkdir(exist_ok=True)
Path("out", name).write_text(text + f"{name} x{scale}\\n")
with open(sys.argv[4], "a") as log:
    log.write(name + "\\n")
"""

TOML = """\
[run]
flake = ".#env"

[data]
cache_dir = "{cache}"

[stages.prepare]
cmd = ["{python}", "stage.py", "prepare", "{base}/raw.txt", "{base}/clean.txt", "{log}"]
inputs = ["{base}/raw.txt"]
deps = ["stage.py"]
outputs = ["out/prepare={base}/clean.txt"]

[stages.train]
cmd = ["{python}", "stage.py", "train", "{base}/clean.txt", "{base}/model.txt", "{log}"]
inputs = ["{base}/clean.txt"]
deps = ["stage.py"]
outputs = ["out/train={base}/model.txt"]
params = {{ scale = {scale} }}

[stages.evaluate]
cmd = ["{python}", "stage.py", "evaluate", "{base}/model.txt", "{base}/eval.txt", "{log}"]
inputs = ["{base}/model.txt"]
deps = ["stage.py"]
outputs = ["out/evaluate={base}/eval.txt"]
"""


@pytest.fixture(params=["file", "s3"])
def pipeline(request: pytest.FixtureRequest, project: Project, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> tuple[Project, str, Path, Data]:
    base = store_base(request.param, request, tmp_path, monkeypatch)
    log = tmp_path / "ran.log"
    settings = {"cache": tmp_path / "cache", "python": sys.executable, "base": base, "log": log}
    (project.root / "stage.py").write_text(STAGE)
    (project.root / "nixrepro.toml").write_text(TOML.format(scale=1, **settings))
    (project.root / ".gitignore").write_text("out/\n")
    project.commit("a data pipeline")
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    (tmp_path / "raw.txt").write_text("raw v1\n")
    data.put(tmp_path / "raw.txt", f"{base}/raw.txt")
    return project, base, log, data


def run_pipeline(project: Project, log: Path) -> tuple[dict[str, str], list[str]]:
    result = project.nixrepro("pipeline", "run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    ran = log.read_text().split() if log.exists() else []
    log.write_text("")
    return {o["stage"]: o["state"] for o in json.loads(result.stdout)}, ran


def test_stages_pass_versioned_data_and_rerun_exactly_what_changed(
    pipeline: tuple[Project, str, Path, Data], tmp_path: Path
) -> None:
    project, base, log, data = pipeline
    states, ran = run_pipeline(project, log)
    assert ran == ["prepare", "train", "evaluate"] and set(states.values()) == {"ran"}
    data.get(f"{base}/eval.txt", tmp_path / "eval.txt")
    assert (tmp_path / "eval.txt").read_text() == "raw v1\nprepare x1\ntrain x1\nevaluate x1\n"

    assert run_pipeline(project, log) == ({"prepare": "skipped", "train": "skipped",
                                           "evaluate": "skipped"}, [])

    toml = project.root / "nixrepro.toml"  # a param of train: train and evaluate rerun
    toml.write_text(toml.read_text().replace("scale = 1", "scale = 2"))
    project.commit("scale 2")
    assert run_pipeline(project, log) == ({"prepare": "skipped", "train": "ran", "evaluate": "ran"},
                                          ["train", "evaluate"])

    (tmp_path / "raw.txt").write_text("raw v2\n")  # new input data: everything downstream reruns
    data.put(tmp_path / "raw.txt", f"{base}/raw.txt")
    states, ran = run_pipeline(project, log)
    assert ran == ["prepare", "train", "evaluate"]
    data.get(f"{base}/eval.txt", tmp_path / "eval2.txt")
    assert (tmp_path / "eval2.txt").read_text() == "raw v2\nprepare x1\ntrain x2\nevaluate x1\n"

    flake = project.root / "flake.nix"  # one store path of the environment: everything reruns
    label = flake.read_text().split('name = "', 1)[1].split("-1.0", 1)[0]
    flake.write_text(env_flake(f"git+file://{project.dep}", label=label, version="1.1"))
    project.commit("env 1.1")
    assert run_pipeline(project, log)[1] == ["prepare", "train", "evaluate"]

    tree = json.loads(project.nixrepro("lineage", f"{base}/eval.txt", "--json").stdout)["root"]
    chain = []
    while tree["run"] is not None:
        chain.append(tree["run"]["stage"])
        tree = tree["inputs"][0]
    assert chain == ["evaluate", "train", "prepare"] and tree["uri"] == f"{base}/raw.txt"
