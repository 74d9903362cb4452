"""CUDA facts: the runtime the environment pins, the driver the host brings, and whether they fit.

Nix pins the CUDA runtime (cuda_cudart / cudatoolkit in the closure) and the compute capabilities
the build targets; it cannot pin the NVIDIA driver, which must match the host's kernel module.
So nixrepro records both sides, with the path and sha256 of the ``libcuda.so.1`` that will load
and how it reaches the process, and refuses a run that cannot work as built: a driver older than
the runtime, or a GPU whose compute capability the build's ``cudaCapabilities`` do not cover.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .closure import StorePathInfo
from .errors import RefusedError
from .host import HostInfo
from .record import BuildFacts, CudaInfo

# nixpkgs' CUDA runtime: cudaPackages.cuda_cudart (12.x, 11.8+) or the monolithic cudatoolkit.
_RUNTIME = re.compile(r"^[a-z0-9]{32}-(?:cuda_cudart|cudatoolkit)-(\d+)\.(\d+)[.\d]*(?:-[a-z]+)?$")
NIXOS_DRIVER_DIR = Path("/run/opengl-driver/lib")


def runtime_version(closure: Sequence[StorePathInfo]) -> str | None:
    """The CUDA runtime version pinned in the closure, from its store path names."""
    versions = set()
    for info in closure:
        match = _RUNTIME.match(info.path.rsplit("/", 1)[-1])
        if match:
            versions.add((int(match.group(1)), int(match.group(2))))
    if not versions:
        return None
    major, minor = max(versions)
    return f"{major}.{minor}"


def find_libcuda(environ: Mapping[str, str], driver_dir: Path = NIXOS_DRIVER_DIR) -> tuple[Path, str] | None:
    """The libcuda.so.1 a Nix-built program will load (links resolved), and how it gets there.

    Nix's glibc does not read the host's ld.so.cache: the driver comes from the runpath NixOS
    sets up (/run/opengl-driver/lib, what autoAddDriverRunpath points to) or from LD_LIBRARY_PATH,
    which is searched first.
    """
    for entry in filter(None, environ.get("LD_LIBRARY_PATH", "").split(":")):
        candidate = Path(entry) / "libcuda.so.1"
        if candidate.exists():
            resolved = Path(os.path.realpath(candidate))
            return resolved, injection_through_library_path(resolved)
    candidate = driver_dir / "libcuda.so.1"
    if candidate.exists():
        return Path(os.path.realpath(candidate)), "nixos-opengl-driver"
    return None


def injection_through_library_path(libcuda: Path) -> str:
    """Who put the driver on LD_LIBRARY_PATH: nixGL (a driver Nix built to match the host's
    kernel module, in the store), nix-gl-host (the host's own libraries copied to its cache), or
    someone else (the host's directory itself, e.g. the pytorch-cuda template's wrapper)."""
    if libcuda.parts[:3] == ("/", "nix", "store"):
        return "nixGL"
    if "nix-gl-host" in libcuda.parts:
        return "nix-gl-host"
    return "LD_LIBRARY_PATH"


def collect(closure: Sequence[StorePathInfo], host: HostInfo, environ: Mapping[str, str],
            driver_dir: Path = NIXOS_DRIVER_DIR) -> CudaInfo | None:
    """CUDA facts when the env has a CUDA runtime or the host has a GPU; None otherwise."""
    runtime = runtime_version(closure)
    if runtime is None and not host.gpus:
        return None
    found = find_libcuda(environ, driver_dir)
    path, sha, how = None, None, None
    if found is not None:
        path, how = str(found[0]), found[1]
        sha = hashlib.sha256(found[0].read_bytes()).hexdigest()
    return CudaInfo(
        runtime=runtime,
        driver_supports=host.cuda_driver,
        compute_capabilities=[gpu.compute_capability for gpu in host.gpus if gpu.compute_capability],
        libcuda=path,
        libcuda_sha256=sha,
        injection=how,
    )


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def check(info: CudaInfo | None, host: HostInfo, facts: BuildFacts | None) -> None:
    """Refuse, with the remedy, a run whose CUDA build cannot work on this host's GPUs."""
    if info is None or not host.gpus:
        return  # no GPU: the experiment runs on the CPU (and says so)
    if info.runtime and info.driver_supports and _version(info.driver_supports) < _version(info.runtime):
        older = "cudaPackages_" + info.driver_supports.replace(".", "_")
        raise RefusedError(
            f"the NVIDIA driver {host.nvidia_driver or '(unknown version)'} supports CUDA up to "
            f"{info.driver_supports}, but the environment's CUDA runtime is {info.runtime}; upgrade "
            f"the driver, or pin an older CUDA in flake.nix (e.g. {older})."
        )
    if facts is not None and facts.cuda_support and facts.cuda_capabilities:
        built = set(facts.cuda_capabilities)
        for index, gpu in enumerate(host.gpus):
            if gpu.compute_capability and gpu.compute_capability not in built:
                raise RefusedError(
                    f"GPU {index} ({gpu.name}) has compute capability {gpu.compute_capability}, which "
                    f"this build's cudaCapabilities ({', '.join(facts.cuda_capabilities)}) do not cover; "
                    f'add "{gpu.compute_capability}" to cudaCapabilities in flake.nix and run '
                    "`nix run .#experiment` again."
                )
