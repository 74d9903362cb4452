"""CUDA facts: the runtime pinned in the closure against the host's driver and GPUs.

No GPU here: `tests/fixtures/bin-fake-nvidia/nvidia-smi` (a labelled test double) prints nvidia-smi
samples, and the "CUDA runtime" is a store path named like nixpkgs' cuda_cudart.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from nixrepro import cuda, host
from nixrepro.closure import StorePathInfo
from nixrepro.errors import RefusedError
from nixrepro.record import BuildFacts
from tests.helpers import git_commit, run_cli, sh

FAKE_NVIDIA = Path(__file__).parent / "fixtures" / "bin-fake-nvidia"
H = "sha256-" + "A" * 43 + "="


def info(name: str) -> StorePathInfo:
    return StorePathInfo(f"/nix/store/{'a' * 32}-{name}", H, 1)


@pytest.mark.parametrize(("names", "expected"), [
    (["python3-3.12.8", "cuda_cudart-12.4.127", "cuda_cudart-12.4.127-lib"], "12.4"),
    (["cudatoolkit-11.8.0", "glibc-2.40-66"], "11.8"),
    (["python3-3.12.8", "cuda_nvcc-12.4.131"], None),  # the compiler is not the runtime
    (["my-cuda_cudart-notes"], None),
])
def test_the_runtime_version_comes_from_the_closure(names: list[str], expected: str | None) -> None:
    assert cuda.runtime_version([info(n) for n in names]) == expected


def test_libcuda_from_ld_library_path_first_then_the_nixos_driver_dir(tmp_path: Path) -> None:
    nixos, custom = tmp_path / "opengl-driver", tmp_path / "custom"
    for directory in (nixos, custom):
        directory.mkdir()
        (directory / "libcuda.so.1").write_text(f"stand-in for libcuda in {directory.name}")
    assert cuda.find_libcuda({"LD_LIBRARY_PATH": f"/nope:{custom}"}, nixos) == (
        custom / "libcuda.so.1", "LD_LIBRARY_PATH")
    assert cuda.find_libcuda({}, nixos) == (nixos / "libcuda.so.1", "nixos-opengl-driver")
    assert cuda.find_libcuda({}, tmp_path / "none") is None


@pytest.mark.parametrize(("libcuda", "injection"), [
    ("/nix/store/4c3fvq3x5gzsqx4q1jcywq6c4s9w2l0a-nvidia-x11-550.54.15-6.6.30/lib/libcuda.so.550.54.15",
     "nixGL"),
    ("/root/.cache/nix-gl-host/5fa2c91e/cuda/libcuda.so.1", "nix-gl-host"),
    ("/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", "LD_LIBRARY_PATH"),
])
def test_how_the_driver_came_on_ld_library_path_is_named(libcuda: str, injection: str) -> None:
    assert cuda.injection_through_library_path(Path(libcuda)) == injection


def sample_host(monkeypatch: pytest.MonkeyPatch, sample: str = "") -> host.HostInfo:
    monkeypatch.setenv("PATH", f"{FAKE_NVIDIA}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_NVIDIA_SAMPLE", sample)
    return host.collect()


def facts(capabilities: list[str]) -> BuildFacts:
    return BuildFacts(rev="0" * 40, nar_hash=None, flake_lock_sha256=None, env="", system="x86_64-linux",
                      nixpkgs_rev=None, cuda_support=True, cuda_capabilities=capabilities)


def test_a_driver_older_than_the_runtime_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a100 = sample_host(monkeypatch, "a100-535")
    found = cuda.collect([info("cuda_cudart-12.4.127")], a100, {}, tmp_path)
    assert found is not None and (found.runtime, found.driver_supports) == ("12.4", "12.2")
    with pytest.raises(RefusedError) as caught:
        cuda.check(found, a100, None)
    assert str(caught.value) == (
        "the NVIDIA driver 535.183.01 supports CUDA up to 12.2, but the environment's CUDA runtime is "
        "12.4; upgrade the driver, or pin an older CUDA in flake.nix (e.g. cudaPackages_12_2).")


def test_a_gpu_the_build_does_not_cover_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    h100 = sample_host(monkeypatch)
    found = cuda.collect([info("cuda_cudart-12.4.127")], h100, {}, tmp_path)
    assert found is not None and found.compute_capabilities == ["9.0", "9.0"]
    cuda.check(found, h100, facts(["8.0", "9.0"]))  # covered: fine
    with pytest.raises(RefusedError) as caught:
        cuda.check(found, h100, facts(["8.0", "8.6"]))
    assert str(caught.value) == (
        "GPU 0 (NVIDIA H100 80GB HBM3) has compute capability 9.0, which this build's cudaCapabilities "
        '(8.0, 8.6) do not cover; add "9.0" to cudaCapabilities in flake.nix and run '
        "`nix run .#experiment` again.")


def test_without_a_gpu_a_cuda_env_runs_on_the_cpu(tmp_path: Path) -> None:
    cpu_only = host.HostInfo(os="Debian", kernel="6.1", arch="x86_64", cpu=None, cpu_count=2,
                             memory_bytes=1, hostname="h")
    found = cuda.collect([info("cuda_cudart-12.4.127")], cpu_only, {}, tmp_path)
    assert found is not None and found.runtime == "12.4" and found.libcuda is None
    cuda.check(found, cpu_only, facts(["8.0"]))
    assert cuda.collect([info("python3-3.12.8")], cpu_only, {}, tmp_path) is None


CUDA_FLAKE = """{
  outputs = { self }:
    let
      system = "x86_64-linux";
      # named like nixpkgs' CUDA runtime; its contents do not matter here
      cudart = derivation { name = "cuda_cudart-12.4.127"; inherit system; builder = "/bin/sh";
                            args = [ "-c" "echo runtime > $out" ]; };
    in {
      packages.${system}.env = derivation {
        name = "cuda-env-TAG"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
        args = [ "-c" "mkdir -p $out/bin && echo ${cudart} > $out/runtime" ];
      };
    };
}
"""


@pytest.mark.nix
def test_a_run_records_cuda_facts_and_refuses_an_old_driver(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=project)
    (project / "flake.nix").write_text(CUDA_FLAKE.replace("TAG", tmp_path.name[-10:]))
    git_commit(project, "a CUDA env")
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "libcuda.so.1").write_bytes(b"stand-in for the host's libcuda")
    env = {**os.environ, "PATH": f"{FAKE_NVIDIA}:{os.environ['PATH']}", "LD_LIBRARY_PATH": str(driver)}

    old_driver = {**env, "FAKE_NVIDIA_SAMPLE": "a100-535"}
    old = run_cli(["run", "--flake", ".#env", "--", "true"], cwd=project, env=old_driver)
    assert old.returncode == 1
    assert old.stderr.startswith("Error: the NVIDIA driver 535.183.01 supports CUDA up to 12.2, but the ")

    ok = run_cli(["run", "--flake", ".#env", "--", sys.executable, "-c", "1"], cwd=project, env=env)
    assert ok.returncode == 0, ok.stderr
    record = json.loads(run_cli(["show", "@latest", "--json"], cwd=project).stdout)

    assert record["cuda"] == {
        "runtime": "12.4", "driver_supports": "12.4", "compute_capabilities": ["9.0", "9.0"],
        "libcuda": str(driver / "libcuda.so.1"),
        "libcuda_sha256": hashlib.sha256(b"stand-in for the host's libcuda").hexdigest(),
        "injection": "LD_LIBRARY_PATH",
    }
    assert record["host"]["nvidia_driver"] == "550.54.15"
