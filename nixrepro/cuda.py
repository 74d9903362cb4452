"""CUDA facts: the runtime the environment pins, the driver the host brings, and whether they fit.

Nix pins the CUDA runtime (cuda_cudart / cudatoolkit in the closure) and the compute capabilities
the build targets; it cannot pin the NVIDIA driver, which must match the host's kernel module.
So nixrepro records both sides, with the path and sha256 of the ``libcuda.so.1`` that will load
and how it reaches the process, read from nixrepro's own environment, which the command inherits
(``lib.mkExperiment``'s ``hostDriver`` puts the driver there before nixrepro starts).

It refuses only what cannot work, by NVIDIA's compatibility rules: a driver of an older CUDA major
than the runtime's, a driver below the minimum of the runtime's major, a GPU whose compute
capability the build's ``cudaCapabilities`` do not cover. A driver of the same major but an older
minor runs the runtime under minor version compatibility: recorded and warned about. So are
LD_LIBRARY_PATH entries that hide libraries of the closure, or hold the host's libc.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .closure import StorePathInfo
from .errors import RefusedError
from .fsutil import sha256_file
from .host import HostInfo
from .record import BuildFacts, CudaInfo, Shadowing

# nixpkgs' CUDA runtime: cudaPackages.cuda_cudart (12.x, 11.8+) or the monolithic cudatoolkit.
_RUNTIME = re.compile(r"^[a-z0-9]{32}-(?:cuda_cudart|cudatoolkit)-(\d+)\.(\d+)[.\d]*(?:-[a-z]+)?$")
NIXOS_DRIVER_DIR = Path("/run/opengl-driver/lib")
# Set by lib.mkExperiment's hostDriver script: the private directory of links to the host's driver
# libraries that it put first on LD_LIBRARY_PATH.
DRIVER_DIR_VARIABLE = "NIXREPRO_DRIVER_DIR"
STORE = "/nix/store/"
# libfoo.so, libfoo.so.12, libfoo.so.550.54.15: what the loader finds by file name
_SHARED_LIBRARY = re.compile(r"\.so(?:\.\d[\w.]*)?$")

# NVIDIA's CUDA compatibility guide, "Minor Version Compatibility": from CUDA 11 on, a runtime X.y
# runs on any driver of the X series at or above this minimum, even one that supports only X.z < y.
MINOR_VERSION_MINIMUM_DRIVER: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580"}
_MINIMUM = {major: tuple(int(part) for part in text.split(".")) for major, text in
            MINOR_VERSION_MINIMUM_DRIVER.items()}
FIRST_MINOR_VERSION_COMPATIBLE_MAJOR = 11
# Where the pytorch-cuda template pins the CUDA release, named by every remedy that pins one.
PIN_WHERE = "in the nixpkgs overlay of flake.nix (the pytorch-cuda template's `overlays`)"


def runtime_version(closure: Sequence[StorePathInfo]) -> str | None:
    """The CUDA runtime version pinned in the closure, from its store path names."""
    versions = set()
    for info in closure:
        if "cuda" not in info.path:  # every name _RUNTIME matches has it: 20,000 regexes spared
            continue
        match = _RUNTIME.match(info.path.rsplit("/", 1)[-1])
        if match:
            versions.add((int(match.group(1)), int(match.group(2))))
    if not versions:
        return None
    major, minor = max(versions)
    return f"{major}.{minor}"


def _library_path(environ: Mapping[str, str]) -> list[str]:
    return [entry for entry in environ.get("LD_LIBRARY_PATH", "").split(":") if entry]


def _private_driver_dir(environ: Mapping[str, str]) -> str | None:
    private = environ.get(DRIVER_DIR_VARIABLE)
    return os.path.realpath(private) if private else None


def find_libcuda(environ: Mapping[str, str], driver_dir: Path = NIXOS_DRIVER_DIR) -> tuple[Path, str] | None:
    """The libcuda.so.1 a Nix-built program will load (links resolved), and how it gets there.

    Nix's glibc does not read the host's ld.so.cache: the driver comes from the runpath NixOS
    sets up (/run/opengl-driver/lib, what autoAddDriverRunpath points to) or from LD_LIBRARY_PATH,
    which is searched first.
    """
    private = _private_driver_dir(environ)
    for entry in _library_path(environ):
        candidate = Path(entry) / "libcuda.so.1"
        if candidate.is_file():  # as the loader: a FIFO or a directory of that name is no library
            resolved = Path(os.path.realpath(candidate))
            if private is not None and os.path.realpath(entry) == private:
                return resolved, "host-driver"
            return resolved, injection_through_library_path(resolved)
    candidate = driver_dir / "libcuda.so.1"
    if candidate.is_file():
        return Path(os.path.realpath(candidate)), "nixos-opengl-driver"
    return None


def injection_through_library_path(libcuda: Path) -> str:
    """Who put the driver on LD_LIBRARY_PATH: nixGL (a driver Nix built to match the host's
    kernel module, in the store), nix-gl-host (the host's own libraries copied to its cache), or
    someone else (a directory set by hand, a cluster module)."""
    if libcuda.parts[:3] == ("/", "nix", "store"):
        return "nixGL"
    if "nix-gl-host" in libcuda.parts:
        return "nix-gl-host"
    return "LD_LIBRARY_PATH"


def foreign_library_dirs(environ: Mapping[str, str]) -> list[str]:
    """The LD_LIBRARY_PATH entries that are not Nix's: outside the store and not the private
    directory of driver links that hostDriver made (those hold only what the closure lacks)."""
    private = _private_driver_dir(environ)
    dirs: dict[str, None] = {}  # ordered, and a set: LD_LIBRARY_PATH can have 10,000s of entries
    for entry in _library_path(environ):
        if entry not in dirs:
            real = os.path.realpath(entry)
            if not real.startswith(STORE) and real != private:
                dirs[entry] = None
    return list(dirs)


def _shared_libraries(directory: str) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [entry.name for entry in entries if _SHARED_LIBRARY.search(entry.name)]
    except OSError:  # absent, not a directory, unreadable: it provides nothing
        return []


def closure_libraries(closure: Sequence[StorePathInfo]) -> dict[str, str]:
    """File name -> path of every shared library in a ``lib/`` or ``lib64/`` of the closure.

    One directory listing per path and subdirectory (a 2,000-path closure: a few milliseconds);
    the first path, in the closure's order, wins a name.
    """
    found: dict[str, str] = {}
    for info in closure:
        for sub in ("lib", "lib64"):
            directory = f"{info.path}/{sub}"
            for name in _shared_libraries(directory):
                found.setdefault(name, f"{directory}/{name}")
    return found


def find_shadowing(closure: Sequence[StorePathInfo], dirs: Sequence[str]) -> list[Shadowing]:
    """The libraries of ``dirs`` (LD_LIBRARY_PATH entries) named like one in the closure."""
    shadowing: list[Shadowing] = []
    pinned: dict[str, str] | None = None  # listed only when some entry has libraries at all
    for directory in dirs:
        names = _shared_libraries(directory)
        if not names:
            continue
        if pinned is None:
            pinned = closure_libraries(closure)
        shadowing.extend(Shadowing(library=name, directory=directory, shadows=pinned[name])
                         for name in sorted(names) if name in pinned)
    return shadowing


def _sha256(path: Path) -> str | None:
    """In chunks (a driver library is tens of MB); None when it cannot be read after all."""
    try:
        return sha256_file(path)
    except OSError:
        return None


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
        sha = _sha256(found[0])
    foreign = foreign_library_dirs(environ)
    return CudaInfo(
        runtime=runtime,
        driver_supports=host.cuda_driver,
        compute_capabilities=[gpu.compute_capability for gpu in host.gpus if gpu.compute_capability],
        libcuda=path,
        libcuda_sha256=sha,
        injection=how,
        compatibility=compatibility(runtime, host.cuda_driver, host.nvidia_driver),
        shadowing=find_shadowing(closure, foreign),
        libc_dirs=[entry for entry in foreign if os.path.exists(os.path.join(entry, "libc.so.6"))],
    )


def _version(text: str) -> tuple[int, int]:
    """'12.4' -> (12, 4); '12' -> (12, 0)."""
    major, _, rest = text.partition(".")
    minor = re.match(r"\d*", rest)
    return int(major), int(minor.group() if minor and minor.group() else 0)


def _driver_version(text: str) -> tuple[int, ...] | None:
    """'535.183.01' -> (535, 183, 1); None when it is not numbers and dots."""
    parts = text.split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else None


def compatibility(runtime: str | None, driver_supports: str | None, driver: str | None) -> str | None:
    """How a CUDA ``runtime`` runs on a driver supporting CUDA ``driver_supports``, by NVIDIA's
    rules: "native", "minor-version", "unsupported", or None when a side is unknown."""
    if runtime is None or driver_supports is None:
        return None
    needed, supported = _version(runtime), _version(driver_supports)
    if supported >= needed:
        return "native"  # a driver runs every runtime up to its own version (backward compatibility)
    if supported[0] < needed[0] or needed[0] < FIRST_MINOR_VERSION_COMPATIBLE_MAJOR:
        return "unsupported"  # no driver runs a newer major; before CUDA 11, not a newer minor either
    minimum = _MINIMUM.get(needed[0])
    have = _driver_version(driver) if driver else None
    if minimum is not None and have is not None and have < minimum:
        return "unsupported"
    return "minor-version"


def _pin(driver_supports: str) -> str | None:
    """The edit that builds for the CUDA release a driver supports; None when nixpkgs has none."""
    major, minor = _version(driver_supports)
    if major < FIRST_MINOR_VERSION_COMPATIBLE_MAJOR:
        return None  # nixpkgs has no CUDA package set older than 11.0
    if (major, minor) == (12, 7):
        minor = 6  # there is no CUDA 12.7 (driver 565 reports it): 12.6 is the release below
    return f"set `cudaPackages = prev.cudaPackages_{major}_{minor};` {PIN_WHERE}"


def _refusal(info: CudaInfo, driver: str) -> str:
    runtime, supports = info.runtime or "", info.driver_supports or ""
    needed, supported = _version(runtime), _version(supports)
    minimum = MINOR_VERSION_MINIMUM_DRIVER.get(needed[0])
    pin = _pin(supports)
    pin_remedy = f", or {pin}" if pin else ""
    if supported[0] == needed[0] and minimum is not None:
        return (
            f"the NVIDIA driver {driver} supports CUDA up to {supports}, and the environment's CUDA "
            f"runtime {runtime} runs on an older CUDA {needed[0]} driver only from driver {minimum} "
            f"on (NVIDIA's minor version compatibility); upgrade the driver to {minimum} or "
            f"newer{pin_remedy}, and run `nix run .#experiment` again."
        )
    upgrade = f"{minimum} or newer" if minimum else f"one that supports CUDA {runtime}"
    why = ("a driver never runs a runtime of a newer CUDA major version than its own"
           if supported[0] < needed[0] else "before CUDA 11 a driver runs no runtime newer than its own")
    return (
        f"the NVIDIA driver {driver} supports CUDA up to {supports}, but the environment's CUDA "
        f"runtime is {runtime}, and {why}; upgrade the driver to {upgrade}{pin_remedy}, and run "
        "`nix run .#experiment` again."
    )


def _minor_version_warning(info: CudaInfo, driver: str) -> str:
    runtime, supports = info.runtime or "", info.driver_supports or ""
    pin = _pin(supports)
    return (
        f"the NVIDIA driver {driver} supports CUDA up to {supports} and the environment's CUDA runtime "
        f"is {runtime}, so the run relies on NVIDIA's minor version compatibility: kernels shipped "
        f"only as PTX newer than CUDA {supports} fail to JIT-compile (CUDA_ERROR_UNSUPPORTED_PTX_VERSION) "
        "and APIs that need a newer driver fail with cudaErrorCallRequiresNewerDriver; for a native "
        f"run, upgrade the driver to one that supports CUDA {runtime}" + (f", or {pin}." if pin else ".")
    )


def _library_path_warnings(info: CudaInfo) -> list[str]:
    warnings = []
    by_dir: dict[str, list[Shadowing]] = {}
    for item in info.shadowing:
        by_dir.setdefault(item.directory, []).append(item)
    for directory in info.libc_dirs:
        hidden = by_dir.pop(directory, [])
        also = f" and hides {len(hidden)} libraries of the environment" if hidden else ""
        warnings.append(
            f"LD_LIBRARY_PATH holds {directory}, which has the host's C library (libc.so.6){also}: "
            "Nix-built programs that load it mix two glibcs and fail (`GLIBC_2.xx not found`, "
            f"crashes); take {directory} off LD_LIBRARY_PATH, and let `hostDriver = true` in "
            "lib.mkExperiment bring the NVIDIA driver (it links only the driver's libraries)."
        )
    for directory, hidden in by_dir.items():
        names = ", ".join(item.library for item in hidden[:3]) + (
            f" and {len(hidden) - 3} more" if len(hidden) > 3 else "")
        warnings.append(
            f"LD_LIBRARY_PATH puts {directory} before the environment's libraries, and it holds "
            f"{names} under the names of pinned ones (e.g. {hidden[0].shadows}): the run loads the "
            "host's copies, not the closure the record names; take "
            f"{directory} off LD_LIBRARY_PATH (for a cluster's CUDA module: `module unload cuda`) "
            "and run again."
        )
    return warnings


def check(info: CudaInfo | None, host: HostInfo, facts: BuildFacts | None) -> list[str]:
    """Refuse, with the remedy, a run whose CUDA build cannot work on this host's GPUs; return
    the warnings (one sentence each, with its remedy) about a run that works but differs from
    what was built: hidden libraries, the host's libc on LD_LIBRARY_PATH, minor version
    compatibility."""
    if info is None:
        return []
    warnings = _library_path_warnings(info)
    if not host.gpus:
        return warnings  # no GPU: the experiment runs on the CPU (and says so)
    driver = host.nvidia_driver or "(unknown version)"
    # from the facts themselves, not info.compatibility: the check holds for any CudaInfo
    fit = compatibility(info.runtime, info.driver_supports, host.nvidia_driver)
    if fit == "unsupported":
        raise RefusedError(_refusal(info, driver))
    if fit == "minor-version":
        warnings.append(_minor_version_warning(info, driver))
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
    return warnings
