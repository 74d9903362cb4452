"""CUDA facts: the runtime pinned in the closure against the host's driver and GPUs.

No GPU here: `tests/fixtures/bin-fake-nvidia/nvidia-smi` (a labelled test double) prints nvidia-smi
samples, and the "CUDA runtime" is a store path named like nixpkgs' cuda_cudart.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nixrepro import cuda, host
from nixrepro.closure import StorePathInfo
from nixrepro.errors import RefusedError
from nixrepro.record import BuildFacts, CudaInfo, Shadowing, _build, to_plain
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


@pytest.mark.parametrize(("runtime", "supports", "driver", "expected"), [
    ("12.4", "12.4", "550.54.15", "native"),
    ("11.8", "12.4", "550.54.15", "native"),  # an older runtime on a newer driver: always
    ("12.4", "12.2", "535.183.01", "minor-version"),
    ("12.8", "12.2", "535.183.01", "minor-version"),  # nixos-25.05's default CUDA on driver 535
    ("11.8", "11.0", "450.80.02", "minor-version"),  # the 11.x minimum itself
    ("11.8", "11.0", "450.36.06", "unsupported"),  # CUDA 11.0's own driver, below 450.80.02
    ("12.4", "12.0", "525.53", "unsupported"),  # below 525.60.13
    ("12.4", "12.0", None, "minor-version"),  # driver version unknown: the minimum cannot be checked
    ("12.4", "11.4", "470.256.02", "unsupported"),  # across majors
    ("13.0", "12.8", "570.86.10", "unsupported"),
    ("13.1", "13.0", "580.65.06", "minor-version"),
    ("10.2", "10.1", "418.87.00", "unsupported"),  # before CUDA 11: no minor version compatibility
    ("12.4", None, None, None),
    (None, "12.4", "550.54.15", None),
])
def test_driver_compatibility_follows_nvidias_rules(runtime: str | None, supports: str | None,
                                                    driver: str | None, expected: str | None) -> None:
    assert cuda.compatibility(runtime, supports, driver) == expected


def test_an_older_minor_driver_runs_under_minor_version_compatibility(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a100 = sample_host(monkeypatch, "a100-535")
    found = cuda.collect([info("cuda_cudart-12.4.127")], a100, {}, tmp_path)
    assert found is not None
    assert (found.runtime, found.driver_supports, found.compatibility) == ("12.4", "12.2", "minor-version")
    assert cuda.check(found, a100, facts(["8.0"])) == [
        "the NVIDIA driver 535.183.01 supports CUDA up to 12.2 and the environment's CUDA runtime is "
        "12.4, so the run relies on NVIDIA's minor version compatibility: kernels shipped only as PTX "
        "newer than CUDA 12.2 fail to JIT-compile (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) and APIs that "
        "need a newer driver fail with cudaErrorCallRequiresNewerDriver; for a native run, upgrade the "
        "driver to one that supports CUDA 12.4, or set `cudaPackages = prev.cudaPackages_12_2;` in the "
        "nixpkgs overlay of flake.nix (the pytorch-cuda template's `overlays`)."]


def test_the_pin_the_remedies_name_is_the_template_s_knob() -> None:
    flake = (Path(__file__).parent.parent / "templates" / "pytorch-cuda" / "flake.nix").read_text()
    assert "overlays = [" in flake and "cudaPackages = prev.cudaPackages;" in flake
    assert "#   cudaPackages = prev.cudaPackages_12_2;" in flake  # the edit the remedies name


def gpu_host(driver: str, supports: str) -> host.HostInfo:
    a100 = host.Gpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-0", memory_bytes=None, compute_capability="8.0")
    return host.HostInfo(os="Ubuntu 22.04", kernel="5.15", arch="x86_64", cpu="cpu", cpu_count=2,
                         memory_bytes=1, hostname="h", gpus=[a100], nvidia_driver=driver,
                         cuda_driver=supports)


def test_a_driver_of_an_older_major_is_refused(tmp_path: Path) -> None:
    old = gpu_host("470.256.02", "11.4")
    found = cuda.collect([info("cuda_cudart-12.4.127")], old, {}, tmp_path)
    assert found is not None and found.compatibility == "unsupported"
    with pytest.raises(RefusedError) as caught:
        cuda.check(found, old, None)
    assert str(caught.value) == (
        "the NVIDIA driver 470.256.02 supports CUDA up to 11.4, but the environment's CUDA runtime is "
        "12.4, and a driver never runs a runtime of a newer CUDA major version than its own; upgrade the "
        "driver to 525.60.13 or newer, or set `cudaPackages = prev.cudaPackages_11_4;` in the nixpkgs "
        "overlay of flake.nix (the pytorch-cuda template's `overlays`), and run `nix run .#experiment` "
        "again.")


def test_a_driver_below_the_minimum_of_the_major_is_refused(tmp_path: Path) -> None:
    early = gpu_host("450.36.06", "11.0")  # the driver CUDA 11.0 shipped with
    found = cuda.collect([info("cudatoolkit-11.8.0")], early, {}, tmp_path)
    with pytest.raises(RefusedError) as caught:
        cuda.check(found, early, None)
    assert str(caught.value) == (
        "the NVIDIA driver 450.36.06 supports CUDA up to 11.0, and the environment's CUDA runtime 11.8 "
        "runs on an older CUDA 11 driver only from driver 450.80.02 on (NVIDIA's minor version "
        "compatibility); upgrade the driver to 450.80.02 or newer, or set "
        "`cudaPackages = prev.cudaPackages_11_0;` in the nixpkgs overlay of flake.nix (the pytorch-cuda "
        "template's `overlays`), and run `nix run .#experiment` again.")


def test_a_cuda_12_driver_below_525_60_13_is_refused(tmp_path: Path) -> None:
    early = gpu_host("525.53", "12.0")
    with pytest.raises(RefusedError) as caught:
        cuda.check(cuda.collect([info("cuda_cudart-12.4.127")], early, {}, tmp_path), early, None)
    assert str(caught.value).startswith(
        "the NVIDIA driver 525.53 supports CUDA up to 12.0, and the environment's CUDA runtime 12.4 runs "
        "on an older CUDA 12 driver only from driver 525.60.13 on (NVIDIA's minor version compatibility); "
        "upgrade the driver to 525.60.13 or newer, or set `cudaPackages = prev.cudaPackages_12_0;` ")


def test_there_is_no_cuda_12_7_to_pin(tmp_path: Path) -> None:
    driver_565 = gpu_host("565.57.01", "12.7")  # driver 565 reports CUDA 12.7, never released
    found = cuda.collect([info("cuda_cudart-12.8.93")], driver_565, {}, tmp_path)
    assert "`cudaPackages = prev.cudaPackages_12_6;`" in cuda.check(found, driver_565, None)[0]


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


def closure_entry(base: Path, name: str, libraries: list[str], sub: str = "lib") -> StorePathInfo:
    """A stand-in closure path (a temp dir: the code only lists its lib/ files)."""
    path = base / f"{'b' * 32}-{name}"
    (path / sub).mkdir(parents=True)
    for library in libraries:
        (path / sub / library).write_text(f"stand-in for {library}")
    return StorePathInfo(str(path), H, 1)


def library_dir(path: Path, libraries: list[str]) -> Path:
    path.mkdir(parents=True)
    for library in libraries:
        (path / library).write_text(f"host copy of {library}")
    return path


def test_a_library_path_entry_that_shadows_the_closure_is_recorded_and_warned(tmp_path: Path) -> None:
    cudart = closure_entry(tmp_path / "store", "cuda_cudart-12.4.127-lib",
                           ["libcudart.so.12", "libcudart.so"])
    cublas = closure_entry(tmp_path / "store", "libcublas-12.4.5.8-lib", ["libcublas.so.12"], sub="lib64")
    module = library_dir(tmp_path / "usr/local/cuda/lib64",
                         ["libcudart.so.12", "libcublas.so.12", "libcufile.so.0", "libcudart_static.a"])
    found = cuda.collect([cudart, cublas], gpu_host("550.54.15", "12.4"),
                         {"LD_LIBRARY_PATH": f"/nix/store/{'c' * 32}-zlib/lib:{module}"}, tmp_path / "none")
    assert found is not None and found.libc_dirs == []
    assert found.shadowing == [
        Shadowing(library="libcublas.so.12", directory=str(module),
                  shadows=f"{cublas.path}/lib64/libcublas.so.12"),
        Shadowing(library="libcudart.so.12", directory=str(module),
                  shadows=f"{cudart.path}/lib/libcudart.so.12"),
    ]
    assert cuda.check(found, gpu_host("550.54.15", "12.4"), None) == [
        f"LD_LIBRARY_PATH puts {module} before the environment's libraries, and it holds "
        f"libcublas.so.12, libcudart.so.12 under the names of pinned ones (e.g. {cublas.path}/lib64/"
        "libcublas.so.12): the run loads the host's copies, not the closure the record names; take "
        f"{module} off LD_LIBRARY_PATH (for a cluster's CUDA module: `module unload cuda`) and run again."]
    # the record keeps the new fields, and reads records written before them
    doc = to_plain(found)
    assert doc["shadowing"][0] == {"library": "libcublas.so.12", "directory": str(module),
                                   "shadows": f"{cublas.path}/lib64/libcublas.so.12"}
    assert _build(CudaInfo, doc) == found
    old = {key: value for key, value in doc.items() if key not in ("shadowing", "libc_dirs", "compatibility")}
    assert _build(CudaInfo, old).shadowing == []


def test_a_library_path_entry_with_the_host_libc_is_warned_about(tmp_path: Path) -> None:
    glibc = closure_entry(tmp_path / "store", "glibc-2.40-66", ["libc.so.6", "libm.so.6"])
    host_lib = library_dir(tmp_path / "usr/lib/x86_64-linux-gnu",
                           ["libc.so.6", "libm.so.6", "libcuda.so.1", "libnvidia-ml.so.1"])
    found = cuda.collect([info("cuda_cudart-12.4.127"), glibc], gpu_host("550.54.15", "12.4"),
                         {"LD_LIBRARY_PATH": str(host_lib)}, tmp_path / "none")
    assert found is not None and found.libc_dirs == [str(host_lib)]
    assert [item.library for item in found.shadowing] == ["libc.so.6", "libm.so.6"]
    assert found.injection == "LD_LIBRARY_PATH"
    assert cuda.check(found, gpu_host("550.54.15", "12.4"), None) == [
        f"LD_LIBRARY_PATH holds {host_lib}, which has the host's C library (libc.so.6) and hides 2 "
        "libraries of the environment: Nix-built programs that load it mix two glibcs and fail "
        f"(`GLIBC_2.xx not found`, crashes); take {host_lib} off LD_LIBRARY_PATH, and let "
        "`hostDriver = true` in lib.mkExperiment bring the NVIDIA driver (it links only the driver's "
        "libraries)."]


def test_a_directory_of_driver_libraries_alone_is_not_warned_about(tmp_path: Path) -> None:
    glibc = closure_entry(tmp_path / "store", "glibc-2.40-66", ["libc.so.6"])
    cudart = closure_entry(tmp_path / "store", "cuda_cudart-12.4.127-lib", ["libcudart.so.12"])
    drivers = library_dir(tmp_path / "driver", ["libcuda.so.1", "libcuda.so.550.54.15", "libnvidia-ml.so.1"])
    for environ in ({"LD_LIBRARY_PATH": str(drivers)},  # set by hand
                    {"LD_LIBRARY_PATH": str(drivers), "NIXREPRO_DRIVER_DIR": str(drivers)}):  # hostDriver
        found = cuda.collect([glibc, cudart], gpu_host("550.54.15", "12.4"), environ, tmp_path / "none")
        assert found is not None and (found.shadowing, found.libc_dirs) == ([], [])
        assert cuda.check(found, gpu_host("550.54.15", "12.4"), None) == []


def test_hostdrivers_private_directory_is_named_and_never_counted_as_shadowing(tmp_path: Path) -> None:
    cudart = closure_entry(tmp_path / "store", "cuda_cudart-12.4.127-lib", ["libcudart.so.12"])
    host_lib = library_dir(tmp_path / "usr/lib/x86_64-linux-gnu", ["libcuda.so.550.54.15", "libcudart.so.12"])
    private = tmp_path / "cache/nixrepro/host-driver" / "usr/lib/x86_64-linux-gnu"
    private.mkdir(parents=True)
    (private / "libcuda.so.1").symlink_to(host_lib / "libcuda.so.550.54.15")
    (private / "libcudart.so.12").symlink_to(host_lib / "libcudart.so.12")  # a name it never links
    environ = {"LD_LIBRARY_PATH": f"{private}:/opt/other", "NIXREPRO_DRIVER_DIR": str(private)}
    found = cuda.collect([cudart], gpu_host("550.54.15", "12.4"), environ, tmp_path / "none")
    assert found is not None
    assert (found.libcuda, found.injection) == (str(host_lib / "libcuda.so.550.54.15"), "host-driver")
    assert found.libcuda_sha256 == hashlib.sha256(b"host copy of libcuda.so.550.54.15").hexdigest()
    assert found.shadowing == []


def test_the_closure_is_listed_only_when_a_foreign_entry_has_libraries(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    closure = [info(f"python3.12-pkg{i}-1.0") for i in range(2000)]
    empty = tmp_path / "empty"
    empty.mkdir()

    def listed(_: object) -> dict[str, str]:
        raise AssertionError("the closure was listed")

    with monkeypatch.context() as patch:
        patch.setattr(cuda, "closure_libraries", listed)
        for path in ("", f"/nix/store/{'c' * 32}-zlib/lib", f"{empty}:/does/not/exist"):
            assert cuda.find_shadowing(closure, cuda.foreign_library_dirs({"LD_LIBRARY_PATH": path})) == []
    started = time.monotonic()
    cuda.closure_libraries(closure)  # 4,000 directories that do not exist
    assert time.monotonic() - started < 2


CUDA_FLAKE = """{
  outputs = { self }:
    let
      system = "x86_64-linux";
      # named like nixpkgs' CUDA runtime; its contents do not matter here
      cudart = version: derivation { name = "cuda_cudart-${version}"; inherit system;
                                     builder = "/bin/sh"; args = [ "-c" "echo runtime > $out" ]; };
      env = version: derivation {
        name = "cuda-env-TAG-${version}"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin";
        args = [ "-c" "mkdir -p $out/bin && echo ${cudart version} > $out/runtime" ];
      };
    in {
      packages.${system} = { env = env "12.4.127"; env13 = env "13.0.48"; };
    };
}
"""


@pytest.mark.nix
def test_a_run_records_cuda_facts_and_refuses_a_driver_of_an_older_major(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=project)
    (project / "flake.nix").write_text(CUDA_FLAKE.replace("TAG", tmp_path.name[-10:]))
    git_commit(project, "a CUDA env")
    driver = tmp_path / "driver"
    driver.mkdir()
    (driver / "libcuda.so.1").write_bytes(b"stand-in for the host's libcuda")
    env = {**os.environ, "PATH": f"{FAKE_NVIDIA}:{os.environ['PATH']}", "LD_LIBRARY_PATH": str(driver)}

    newer_major = run_cli(["run", "--flake", ".#env13", "--", "true"], cwd=project, env=env)
    assert newer_major.returncode == 1
    assert newer_major.stderr.startswith(
        "Error: the NVIDIA driver 550.54.15 supports CUDA up to 12.4, but the environment's CUDA "
        "runtime is 13.0, and a driver never runs a runtime of a newer CUDA major version than its own; ")

    old_minor = {**env, "FAKE_NVIDIA_SAMPLE": "a100-535"}  # 12.4 on a 12.2 driver: it runs
    ran = run_cli(["run", "--flake", ".#env", "--", sys.executable, "-c", "1"], cwd=project, env=old_minor)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(run_cli(["show", "@latest", "--json"], cwd=project).stdout)["cuda"]["compatibility"] \
        == "minor-version"
    [warning] = [w for w in ran.stderr.splitlines() if "minor version compatibility" in w]
    assert warning.startswith("nixrepro: warning: ") and "PTX" in warning  # said when the run starts

    ok = run_cli(["run", "--flake", ".#env", "--", sys.executable, "-c", "1"], cwd=project, env=env)
    assert ok.returncode == 0, ok.stderr
    record = json.loads(run_cli(["show", "@latest", "--json"], cwd=project).stdout)

    assert record["cuda"] == {
        "runtime": "12.4", "driver_supports": "12.4", "compute_capabilities": ["9.0", "9.0"],
        "libcuda": str(driver / "libcuda.so.1"),
        "libcuda_sha256": hashlib.sha256(b"stand-in for the host's libcuda").hexdigest(),
        "injection": "LD_LIBRARY_PATH", "compatibility": "native", "shadowing": [], "libc_dirs": [],
    }
    assert record["host"]["nvidia_driver"] == "550.54.15"


ROOT = Path(__file__).resolve().parent.parent
FAKE_TOOL = """#!/bin/sh
# stands in for nixrepro: prints what the app handed it
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
echo "NIXREPRO_DRIVER_DIR=${NIXREPRO_DRIVER_DIR:-}"
echo "ARGS=$*"
"""
APPS = """
let
  system = "x86_64-linux";
  pkgs = import ROOT/tests/fixtures/nixpkgs-standin { inherit system; };
  lib = import ROOT/nix/lib.nix { self = null; };
  tool = derivation {
    name = "fake-nixrepro"; inherit system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; src = BASE/tool.sh;
    args = [ "-c" "mkdir -p $out/bin && cp $src $out/bin/nixrepro && chmod +x $out/bin/nixrepro" ];
  };
  env = derivation { name = "env"; inherit system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  app = hostDriver: (lib.mkExperiment {
    inherit pkgs env hostDriver; self = BASE; command = "train"; nixrepro = tool;
  }).program;
in { on = app true; off = app false; }
"""


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """lib.mkExperiment's app scripts, with hostDriver on and off, running a stand-in nixrepro."""
    base = tmp_path_factory.mktemp("apps")
    (base / "tool.sh").write_text(FAKE_TOOL)
    expr = APPS.replace("ROOT", str(ROOT)).replace("BASE", str(base))
    programs = json.loads(sh(["nix", "eval", "--json", "--impure", "--expr", expr], cwd=base))
    drvs = json.loads(sh(["nix", "eval", "--json", "--impure", "--expr",
                          f"let a = {expr}; in builtins.attrNames (builtins.getContext (a.on + a.off))"],
                         cwd=base))
    sh(["nix", "build", "--no-link", *drvs], cwd=base)
    return dict(programs)


def run_app(program: str, environ: dict[str, str], shell: str = "/bin/sh") -> dict[str, str]:
    ran = subprocess.run([shell, program, "--lr", "1"], env={"PATH": "/usr/bin:/bin", **environ},
                         capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in ran.stdout.splitlines())


needs_no_nixos_driver = pytest.mark.skipif(
    (cuda.NIXOS_DRIVER_DIR / "libcuda.so.1").exists(), reason="this host has a NixOS driver, which wins")


@pytest.mark.nix
@needs_no_nixos_driver
@pytest.mark.parametrize("shell", ["/bin/sh", "bash"])  # the stand-in's shell, and nixpkgs'
def test_host_driver_links_only_the_driver_before_nixrepro_starts(
        apps: dict[str, str], tmp_path: Path, shell: str) -> None:
    host_lib = library_dir(tmp_path / "usr/lib/x86_64-linux-gnu", [
        "libcuda.so.550.54.15", "libnvidia-ml.so.550.54.15", "libnvidia-ptxjitcompiler.so.550.54.15",
        "libc.so.6", "libm.so.6", "libcudart.so.12", "libz.so.1"])
    (host_lib / "libcuda.so.1").symlink_to("libcuda.so.550.54.15")
    (host_lib / "libcuda.so").symlink_to("libcuda.so.1")
    cache = tmp_path / "cache"
    private = cache / "nixrepro" / "host-driver" / str(host_lib).lstrip("/")
    private.mkdir(parents=True)
    (private / "libnvidia-ml.so.535.183.01").symlink_to(host_lib / "libnvidia-ml.so.535.183.01")  # upgraded
    environ = {"XDG_CACHE_HOME": str(cache), "LD_LIBRARY_PATH": "/opt/site/lib",
               "NIXREPRO_DRIVER_SEARCH_PATH": f"{tmp_path}/no-driver-here:{host_lib}"}

    for _ in range(2):  # the second run finds the links in place
        seen = run_app(apps["on"], environ, shell)
        assert seen["LD_LIBRARY_PATH"] == f"{private}:/opt/site/lib"
        assert seen["NIXREPRO_DRIVER_DIR"] == str(private)
        assert seen["ARGS"].startswith("run --facts /nix/store/")
        assert seen["ARGS"].endswith(" -- train --lr 1")  # the exec line, as it was
        linked = sorted(os.listdir(private))
        # the driver's libraries only (no libc, no libcudart), and the stale link gone
        assert linked == ["libcuda.so", "libcuda.so.1", "libcuda.so.550.54.15", "libnvidia-ml.so.550.54.15",
                          "libnvidia-ptxjitcompiler.so.550.54.15"]
        assert all(os.readlink(private / name) == str(host_lib / name) for name in linked)

    # nixrepro, reading the environment the app gave it, names the driver that loads
    cudart = closure_entry(tmp_path / "store", "cuda_cudart-12.4.127-lib", ["libcudart.so.12"])
    found = cuda.collect([cudart], gpu_host("550.54.15", "12.4"), {**environ, **seen}, tmp_path / "none")
    assert found is not None
    assert (found.libcuda, found.injection) == (str(host_lib / "libcuda.so.550.54.15"), "host-driver")
    assert (found.shadowing, found.libc_dirs) == ([], [])


@pytest.mark.nix
@needs_no_nixos_driver
def test_host_driver_leaves_a_chosen_or_missing_driver_alone(apps: dict[str, str], tmp_path: Path) -> None:
    host_lib = library_dir(tmp_path / "usr/lib64", ["libcuda.so.1"])
    nixgl = library_dir(tmp_path / "nixgl/lib", ["libcuda.so.1"])
    search = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "NIXREPRO_DRIVER_SEARCH_PATH": str(host_lib)}
    chosen = run_app(apps["on"], {**search, "LD_LIBRARY_PATH": f"/opt/x:{nixgl}"})
    assert (chosen["LD_LIBRARY_PATH"], chosen["NIXREPRO_DRIVER_DIR"]) == (f"/opt/x:{nixgl}", "")
    missing = run_app(apps["on"], {**search, "NIXREPRO_DRIVER_SEARCH_PATH": str(tmp_path / "none")})
    assert (missing["LD_LIBRARY_PATH"], missing["NIXREPRO_DRIVER_DIR"]) == ("", "")
    homeless = subprocess.run(["/bin/sh", apps["on"]], env={"PATH": "/usr/bin:/bin", **search,
                              "XDG_CACHE_HOME": ""}, capture_output=True, text=True, check=True)
    assert "LD_LIBRARY_PATH=\n" in homeless.stdout
    assert homeless.stderr == (
        "nixrepro: warning: no cache directory usable on LD_LIBRARY_PATH (XDG_CACHE_HOME and HOME "
        f"unset, relative or holding a ':'), so the NVIDIA driver in {host_lib} is not put on "
        "LD_LIBRARY_PATH; set HOME to an absolute path without ':' and run again.\n")
    off = run_app(apps["off"], search)
    assert (off["LD_LIBRARY_PATH"], off["NIXREPRO_DRIVER_DIR"]) == ("", "")
    assert not (tmp_path / "cache").exists()
    assert "LD_LIBRARY_PATH" not in Path(apps["off"]).read_text()  # without the option: the exec line only
