"""What runs is what is recorded: the stand-in nixpkgs' python3 and numpy are a real closure.

tests/fixtures/nixpkgs-standin/python builds the host's CPython with its standard library and
shared libraries, and numpy from PyPI wheels (scripts/setup.sh adds them to the store), into
self-contained store paths. These tests run a probe as the minimal template's train.py and check
that its interpreter, numpy and every piece of code it maps come from paths of the recorded
closure (~125 MiB, thousands of files, `verify --contents` passes); that the env still runs with
the test venv, the host's Python and the host's libraries hidden; and that `archive` and `rebuild`
(from source, and from the archive after the closure is deleted) hold on the interpreter's.

The package set is built once and then cached in the store (its paths are the same in every
session); the rebuild test deletes paths, so it builds a salted copy of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import delete_store_paths, git_commit, run_cli, sh
from tests.test_flake import last_record, make_inputs, new_project, nix

pytestmark = pytest.mark.nix
ROOT = Path(__file__).resolve().parent.parent
WHEELS = ROOT / "tests" / "fixtures" / "nixpkgs-standin" / "python" / "wheels.json"

PROBE = """\
import json, os, sys
import numpy
import nixrepro

fields = [line.split() for line in open("/proc/self/maps")]
code = sorted({f[5] for f in fields if len(f) > 5 and "x" in f[1] and f[5].startswith("/")})
modules = sorted({m.__file__ for name, m in list(sys.modules.items())
                  if getattr(m, "__file__", None) and name != "__main__"})  # main: the flake's source
nixrepro.log({"sum": float(numpy.arange(10).sum())})
print("PROBE " + json.dumps({
    "executable": sys.executable, "executable_real": os.path.realpath(sys.executable),
    "numpy": numpy.__file__, "numpy_real": os.path.realpath(numpy.__file__),
    "version": numpy.__version__, "nixrepro": os.path.realpath(nixrepro.__file__),
    "prefix": sys.prefix, "code": code, "modules": [os.path.realpath(m) for m in modules],
}))
"""


def probe_output(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("PROBE ")]
    assert len(lines) == 1, text
    return dict(json.loads(lines[0].removeprefix("PROBE ")))


def owner(path: str, closure: set[str]) -> str | None:
    """The store path of ``closure`` that holds ``path``, if any."""
    parts = path.split("/")
    top = "/".join(parts[:4]) if path.startswith("/nix/store/") else ""
    return top if top in closure else None


@pytest.fixture(scope="module")
def wheels_in_store(has_nix: None) -> None:
    for spec in json.loads(WHEELS.read_text()):
        stored = sh(["nix-store", "--print-fixed-path", "sha256", spec["sha256"], spec["file"]]).strip()
        if not Path(stored).exists():
            pytest.fail(f"{spec['file']} is not in the Nix store; run `bash scripts/setup.sh` (it "
                        "fetches the stand-in nixpkgs' wheels and adds them)")


def probe_project(base: Path, salt: str = "") -> Path:
    """A project made from the minimal template whose train.py is the probe (committed)."""
    inputs = make_inputs(base / "inputs")
    if salt:
        default = inputs[0] / "default.nix"
        text = default.read_text()
        assert "import ./python { inherit system; }" in text
        default.write_text(text.replace("import ./python { inherit system; }",
                                        f'import ./python {{ inherit system; salt = "{salt}"; }}'))
    project = new_project(base, inputs)
    (project / "train.py").write_text(PROBE)
    git_commit(project, "probe")
    return project


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory,
           wheels_in_store: None) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(project, record, probe output) of one `nix run .#experiment` of the probe."""
    project = probe_project(tmp_path_factory.mktemp("real-closure"))
    result = nix("run", ".#experiment", cwd=project)
    assert result.returncode == 0, result.stderr
    return project, last_record(project), probe_output(result.stdout)


def test_nix_run_runs_the_interpreter_and_numpy_of_the_recorded_closure(
        probed: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    _, record, probe = probed
    env = record["environment"]
    closure = {p["path"] for p in env["closure"]}
    names = sorted(p.split("-", 1)[1] for p in closure)
    assert names == ["gcc-lib", "glibc", "python3-3.11", "python3-3.11-env",
                     "python3.11-nixrepro-0.1.0", "python3.11-numpy-2.2.6"]
    assert sum(p["narSize"] for p in env["closure"]) > 100 * 2**20
    assert probe["executable"] == f"{env['env_path']}/bin/python" and probe["prefix"] == env["env_path"]
    assert (owner(probe["executable_real"], closure) or "").endswith("-python3-3.11"), probe
    assert probe["numpy"].startswith(f"{env['env_path']}/lib/python3.11/site-packages/numpy/")
    assert (owner(probe["numpy_real"], closure) or "").endswith("-python3.11-numpy-2.2.6")
    assert probe["version"] == "2.2.6"
    assert (owner(probe["nixrepro"], closure) or "").endswith("-python3.11-nixrepro-0.1.0")
    # every mapped piece of code (executable, loader, libc, libpython's libraries, numpy's
    # extension modules and openblas) and every imported module is from the recorded closure
    assert probe["code"] and [c for c in probe["code"] if not owner(c, closure)] == []
    loaded = {Path(c).name for c in probe["code"]}
    assert {"python3.11", "ld-linux-x86-64.so.2", "libc.so.6", "libstdc++.so.6"} <= loaded, loaded
    assert any("/site-packages/numpy.libs/libscipy_openblas" in c for c in probe["code"]), loaded
    assert [m for m in probe["modules"] if not owner(m, closure)] == []
    venv = str(Path(sys.prefix).resolve())
    assert not any(p.startswith(venv) for p in [*probe["code"], *probe["modules"]])


def test_the_recorded_env_runs_with_the_venv_and_the_host_python_and_libraries_hidden(
        probed: tuple[Path, dict[str, Any], dict[str, Any]], tmp_path: Path) -> None:
    """An empty environment, and (where this process may make a mount namespace, as root can) the
    test venv, the interpreter it was made from, the host's Python and its library directory
    mounted over with an empty directory."""
    _, record, probe = probed
    python = f"{record['environment']['env_path']}/bin/python"
    hidden = [sys.prefix, os.path.realpath(sys.base_prefix) if sys.base_prefix != "/usr" else "",
              "/usr/local/lib", "/usr/lib/python3", "/usr/lib/python3.11", "/usr/lib/x86_64-linux-gnu"]
    hidden = [d for d in dict.fromkeys(hidden) if d and Path(d).is_dir()]
    empty = tmp_path / "empty"
    empty.mkdir()
    mounts = "".join(f"/bin/mount --bind {empty} {d} && " for d in hidden)
    argv = ["/usr/bin/unshare", "--mount", "/bin/sh", "-c", mounts + 'exec "$@"', "sh", python, "-c", PROBE]
    result = subprocess.run(argv, env={"PATH": "/nonexistent"}, capture_output=True, text=True,
                            cwd=tmp_path, check=False)
    if result.returncode != 0 and ("unshare" in result.stderr or "mount" in result.stderr):
        # no mount namespace here: an empty environment and a PATH without the venv only
        result = subprocess.run([python, "-c", PROBE], env={"PATH": "/nonexistent"}, cwd=tmp_path,
                                capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    alone = probe_output(result.stdout)
    assert (alone["executable"], alone["numpy_real"], alone["version"]) == \
        (probe["executable"], probe["numpy_real"], "2.2.6")


def test_verify_contents_on_the_closure_with_numpy(
        probed: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    project, record, _ = probed
    files = sum(len(names) for p in record["environment"]["closure"] for _, _, names in os.walk(p["path"]))
    assert files > 2000  # the standard library and numpy
    verified = run_cli(["verify", record["id"], "--contents"], cwd=project)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "contents          6 paths re-hashed, all match" in verified.stdout


def test_archive_and_rebuild_the_interpreter_closure_from_source_and_from_the_archive(
        tmp_path: Path, wheels_in_store: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The env without numpy (interpreter, glibc, gcc-lib, nixrepro: ~50 MiB, ~1400 files): nix
    compresses an archive with xz, ~1.3 MiB/s here, so numpy's 70 MiB would add a minute."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # the archive's signing key
    project = probe_project(tmp_path, salt=secrets.token_hex(5))  # paths of its own: deleted below
    flake = project / "flake.nix"
    assert "(ps: [ ps.numpy (nixrepro" in flake.read_text()
    flake.write_text(flake.read_text().replace("(ps: [ ps.numpy (nixrepro", "(ps: [ (nixrepro"))
    git_commit(project, "no numpy")
    code = "import nixrepro, ssl, sqlite3, sys; print(sys.executable, ssl.OPENSSL_VERSION)"
    ran = run_cli(["run", "--flake", ".#env", "--", "python", "-c", code], cwd=project, timeout=300)
    assert ran.returncode == 0, ran.stderr
    record = last_record(project)
    env = record["environment"]
    closure = [p["path"] for p in env["closure"]]
    assert sorted(p.split("-", 1)[1] for p in closure) == [
        "gcc-lib", "glibc", "python3-3.11", "python3-3.11-env", "python3.11-nixrepro-0.1.0"]
    assert ran.stdout.startswith(f"{env['env_path']}/bin/python OpenSSL ")
    assert sum(p["narSize"] for p in env["closure"]) > 40 * 2**20
    assert sum(len(names) for path in closure for _, _, names in os.walk(path)) > 1000

    archive = tmp_path / "archive"
    archived = run_cli(["archive", "@latest", "--to", f"file://{archive}"], cwd=project, timeout=300)
    assert archived.returncode == 0, archived.stderr
    for path in closure:
        assert (archive / f"{Path(path).name[:32]}.narinfo").is_file(), path
    assert sum(f.stat().st_size for f in (archive / "nar").iterdir()) > 10 * 2**20

    def forget() -> None:  # rebuilds make no GC root (nix build --no-link)
        delete_store_paths(closure)
        assert not any(Path(p).exists() for p in closure)

    identical = (f"identical: {env['env_path']} has the recorded closure hash "
                 f"{env['closure_hash']} (5 paths)\n")
    # from source: the interpreter copied and patched again and compiled, bit for bit
    sidecar = project / ".nixrepro" / "runs" / record["id"] / "archives.json"
    sidecar.rename(sidecar.with_suffix(".away"))
    assert run_cli(["gc-roots", "remove", record["id"]], cwd=project).returncode == 0
    forget()
    rebuilt = run_cli(["rebuild", "@latest"], cwd=project, timeout=300)
    assert (rebuilt.returncode, rebuilt.stdout) == (0, identical), rebuilt.stderr

    # from the archive, after the closure is gone again: substituted, signed, identical
    sidecar.with_suffix(".away").rename(sidecar)
    forget()
    rebuilt = run_cli(["rebuild", "@latest", "--json"], cwd=project, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    answer = json.loads(rebuilt.stdout)
    assert (answer["identical"], answer["env_path"]) == (True, env["env_path"])
    assert answer["source"] and answer["source"].startswith("file://")
    verified = run_cli(["verify", "@latest", "--contents"], cwd=project)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "contents          5 paths re-hashed, all match" in verified.stdout
