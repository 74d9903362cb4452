"""Data in recorded runs: pinned inputs, versioned outputs, reproduce's pins, and nothing lost when
S3 dies mid-run (a real SeaweedFS server stopped and started again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixrepro.config import DataConfig
from nixrepro.datastore.ops import Data
from nixrepro.record import record_sha256
from tests.helpers import Project, git_commit
from tests.s3server import S3Server, store_base

pytestmark = pytest.mark.nix

EXPERIMENT = """\
import sys
from pathlib import Path
import nixrepro, nixrepro.data
source, target = sys.argv[1], sys.argv[2]
text = nixrepro.data.input(source).read_text()
Path("model.txt").write_text(text.upper())
nixrepro.data.output("model.txt", target)
nixrepro.log({"chars": len(text)})
"""


@pytest.fixture
def project_with_data(project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    (project.root / "train.py").write_text(EXPERIMENT)
    (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\n')
    (project.root / ".gitignore").write_text("model.txt\n")
    git_commit(project.root, "a data experiment")
    return project


def record_of(project: Project, ref: str = "@latest") -> dict:
    return project.record(ref)


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_run_records_its_pinned_input_and_its_new_output(
    project_with_data: Project, tmp_path: Path, backend: str, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = project_with_data
    base = store_base(backend, request, tmp_path, monkeypatch)
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    (tmp_path / "raw.txt").write_text("hello data\n")
    raw = data.put(tmp_path / "raw.txt", f"{base}/raw.txt").version

    result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "train.py",
                              f"{base}/raw.txt", f"{base}/model.txt")
    assert result.returncode == 0, result.stderr
    record = record_of(project)
    assert record["data"]["inputs"] == [{"uri": f"{base}/raw.txt", "version_id": raw.version_id,
                                         "sha256": raw.sha256, "size": 11, "pending": False}]
    (output,) = record["data"]["outputs"]
    assert output["uri"] == f"{base}/model.txt" and output["pending"] is False
    stored, _ = data.get(f"{base}/model.txt@{output['version_id']}", tmp_path / "model.txt")
    assert (tmp_path / "model.txt").read_text() == "HELLO DATA\n"
    assert stored.sha256 == output["sha256"]
    assert project.nixrepro("verify", "@latest").returncode == 0


def test_reproduce_reads_the_recorded_input_version_even_when_a_newer_one_exists(
    project_with_data: Project, tmp_path: Path
) -> None:
    project = project_with_data
    base = f"file://{tmp_path / 'store'}"
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    (tmp_path / "raw.txt").write_text("first\n")
    first = data.put(tmp_path / "raw.txt", f"{base}/raw.txt").version
    assert project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "train.py",
                            f"{base}/raw.txt", f"{base}/model.txt").returncode == 0
    original = record_of(project)
    (tmp_path / "raw.txt").write_text("a much newer dataset\n")
    data.put(tmp_path / "raw.txt", f"{base}/raw.txt")

    result = project.nixrepro("reproduce", original["id"])
    assert result.returncode == 0, result.stdout + result.stderr
    child = record_of(project)
    assert child["parent"] == original["id"]
    assert child["data"]["inputs"][0]["version_id"] == first.version_id
    assert child["metrics"] == original["metrics"] == {"chars": 6}


def test_run_input_and_output_flags_serve_commands_that_are_not_python(
    project: Project, tmp_path: Path
) -> None:
    base = f"file://{tmp_path / 'store'}"
    (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\n')
    (project.root / ".gitignore").write_text("out/\n")
    git_commit(project.root, "config")
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    (tmp_path / "in.csv").write_text("1,2,3\n")
    pinned = data.put(tmp_path / "in.csv", f"{base}/in.csv").version
    script = ('mkdir -p out && python3 -c "import json,os; '
              "p=json.loads(os.environ['NIXREPRO_INPUTS'])['" + f"{base}/in.csv" + "']; "
              "open('out/sum.txt','w').write(str(sum(map(int, open(p).read().split(',')))))\"")
    result = project.nixrepro("run", "--flake", ".#env", "--input", f"{base}/in.csv@{pinned.version_id}",
                              "--output", f"out/sum.txt={base}/sum.txt", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    record = record_of(project)
    assert [i["version_id"] for i in record["data"]["inputs"]] == [pinned.version_id]
    (out,) = record["data"]["outputs"]
    data.get(f"{base}/sum.txt@{out['version_id']}", tmp_path / "sum.txt")
    assert (tmp_path / "sum.txt").read_text() == "6"

    bad = project.nixrepro("run", "--flake", ".#env", "--output", "sum.txt", "--", "true")
    assert bad.returncode == 2
    assert bad.stderr == ("Error: --output 'sum.txt' is not LOCAL=URI; write it as "
                          "--output model.pt=s3://bucket/model.pt.\n")
    missing = project.nixrepro("run", "--flake", ".#env", "--input", f"{base}/nope.csv", "--", "true")
    assert missing.returncode == 1
    assert missing.stderr == (f"Error: there is no object at {base}/nope.csv; `nixrepro data ls` lists "
                              "what is there.\n")
    assert len(list(project.runs_dir.iterdir())) == 1  # refused runs record nothing


SLOW_OUTPUT = """\
import sys
from pathlib import Path
import nixrepro, nixrepro.data
Path("big.bin").write_bytes(bytes(range(256)) * 4096 * 96)  # 96 MiB: a parallel multipart upload
Path("uploading").write_text("x")
nixrepro.data.output("big.bin", sys.argv[1])
nixrepro.log({"done": 1})
"""


def test_s3_dying_mid_run_loses_nothing_and_sync_completes_the_record(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = S3Server(tmp_path / "s3")
    (tmp_path / "s3").mkdir()
    server.start()
    try:
        bucket = server.new_bucket()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        (project.root / "train.py").write_text(SLOW_OUTPUT)
        (project.root / "nixrepro.toml").write_text(f'[data]\ncache_dir = "{tmp_path / "cache"}"\n')
        (project.root / ".gitignore").write_text("big.bin\nuploading\n")
        git_commit(project.root, "slow output")
        uri = f"s3://{bucket}/big.bin"
        argv = [sys.executable, "-m", "nixrepro", "run", "--flake", ".#env", "--", sys.executable,
                "train.py", uri]
        proc = subprocess.Popen(argv, cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 60
        while not (project.root / "uploading").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        server.stop()  # S3 dies (SIGKILL) while the upload is under way
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "kept locally as pending; `nixrepro sync` uploads it" in err

        record = json.loads(project.nixrepro("show", "@latest", "--json").stdout)
        assert record["status"] == "succeeded" and record["metrics"] == {"done": 1}
        (pending,) = record["data"]["outputs"]
        assert pending["pending"] is True and pending["version_id"] is None
        expected = bytes(range(256)) * 4096 * 96
        import hashlib

        assert pending["sha256"] == hashlib.sha256(expected).hexdigest()
        (project.root / "big.bin").unlink()  # the user cleans up: the cache still has the bytes

        server.start()
        synced = project.nixrepro("sync")
        assert synced.returncode == 0, synced.stderr
        record = json.loads(project.nixrepro("show", record["id"], "--json").stdout)
        (output,) = record["data"]["outputs"]
        assert output["pending"] is False and output["version_id"]
        assert output["sha256"] == pending["sha256"]
        assert record["record_sha256"] == record_sha256(record)
        assert f"{uri}@{output['version_id']}" in synced.stdout
        body = server.client().get_object(Bucket=bucket, Key="big.bin", VersionId=output["version_id"])
        assert hashlib.sha256(body["Body"].read()).hexdigest() == pending["sha256"]
        assert project.nixrepro("sync").stdout.splitlines()[0] == "data: nothing to upload"
    finally:
        server.stop()


def test_lineage_follows_real_data_across_runs(project_with_data: Project, tmp_path: Path) -> None:
    project = project_with_data
    base = f"file://{tmp_path / 'store'}"
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    (tmp_path / "raw.txt").write_text("abc\n")
    data.put(tmp_path / "raw.txt", f"{base}/raw.txt")
    for source, target in (("raw.txt", "clean.txt"), ("clean.txt", "model.txt")):
        assert project.nixrepro("run", "--flake", ".#env", "--name", target, "--", sys.executable,
                                "train.py", f"{base}/{source}", f"{base}/{target}").returncode == 0
    tree = json.loads(project.nixrepro("lineage", f"{base}/model.txt", "--json").stdout)["root"]
    assert tree["run"]["name"] == "model.txt"
    assert tree["inputs"][0]["run"]["name"] == "clean.txt"
    assert tree["inputs"][0]["inputs"][0]["uri"] == f"{base}/raw.txt"
    assert tree["inputs"][0]["inputs"][0]["run"] is None


def test_verify_checks_that_recorded_data_is_still_there(project_with_data: Project, tmp_path: Path) -> None:
    project = project_with_data
    base = f"file://{tmp_path / 'store'}"
    data = Data(DataConfig(cache_dir=str(tmp_path / "cache")))
    (tmp_path / "raw.txt").write_text("abc\n")
    raw = data.put(tmp_path / "raw.txt", f"{base}/raw.txt").version
    assert project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "train.py",
                            f"{base}/raw.txt", f"{base}/model.txt").returncode == 0
    shown = json.loads(project.nixrepro("verify", "@latest", "--json").stdout)
    checks = {c["name"]: c for c in shown["checks"]}
    assert checks["data"]["result"] == "pass"
    assert checks["data"]["detail"] == "all 2 data versions present with the recorded sha256"

    stored = tmp_path / "store" / ".nixrepro-versions" / "raw.txt" / str(raw.version_id)
    os.chmod(stored, 0o644)
    stored.write_text("xyz\n")  # same size, other bytes: only a re-hash can tell
    assert project.nixrepro("verify", "@latest").returncode == 0
    contents = project.nixrepro("verify", "@latest", "--contents", "--json")
    assert contents.returncode == 1
    detail = {c["name"]: c for c in json.loads(contents.stdout)["checks"]}["data"]["detail"]
    assert detail.startswith(f"{base}/raw.txt@{raw.version_id}: {base}/raw.txt@{raw.version_id} does not "
                             "match its recorded sha256")

    for path in stored.parent.iterdir():  # every version of raw.txt is gone
        path.unlink()
    gone = project.nixrepro("verify", "@latest", "--json")
    assert gone.returncode == 1
    detail = {c["name"]: c for c in json.loads(gone.stdout)["checks"]}["data"]["detail"]
    assert detail == (f"{base}/raw.txt@{raw.version_id}: there is no object at {base}/raw.txt; "
                      "`nixrepro data ls` lists what is there.")
