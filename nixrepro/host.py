"""Host facts Nix cannot pin: OS, kernel, CPU, memory, GPUs and the NVIDIA driver.

Each collector drops out quietly when its source is absent (no nvidia-smi: no GPUs, driver null),
like sacred's host-info getters: a missing tool is a fact about the host, not an error.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import proc

GPU_QUERY = "name,uuid,memory.total,compute_cap,driver_version"


@dataclass(frozen=True)
class Gpu:
    name: str
    uuid: str
    memory_bytes: int | None
    compute_capability: str | None


@dataclass(frozen=True)
class HostInfo:
    os: str
    kernel: str
    arch: str
    cpu: str
    cpu_count: int
    memory_bytes: int | None
    hostname: str = ""
    gpus: list[Gpu] = field(default_factory=list)
    nvidia_driver: str | None = None
    cuda_driver: str | None = None


def collect(proc_root: Path = Path("/proc"), etc: Path = Path("/etc")) -> HostInfo:
    """Read the host facts of this machine."""
    uname = platform.uname()
    gpus, driver, cuda = nvidia_facts(proc_root)
    return HostInfo(
        os=os_name(etc),
        kernel=uname.release,
        arch=uname.machine,
        cpu=cpu_model(proc_root) or uname.processor or uname.machine,
        cpu_count=os.cpu_count() or 0,
        memory_bytes=memory_bytes(proc_root),
        hostname=uname.node,
        gpus=gpus,
        nvidia_driver=driver,
        cuda_driver=cuda,
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def os_name(etc: Path) -> str:
    text = _read(etc / "os-release") or ""
    fields = dict(
        (key, value.strip().strip('"'))
        for key, _, value in (line.partition("=") for line in text.splitlines())
        if key
    )
    return fields.get("PRETTY_NAME") or fields.get("NAME") or platform.system()


def cpu_model(proc_root: Path) -> str | None:
    text = _read(proc_root / "cpuinfo") or ""
    for key in ("model name", "Hardware", "cpu model", "Processor"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return None


def memory_bytes(proc_root: Path) -> int | None:
    text = _read(proc_root / "meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def nvidia_facts(proc_root: Path = Path("/proc")) -> tuple[list[Gpu], str | None, str | None]:
    """GPUs, driver version and the CUDA version the driver supports; empty/None without NVIDIA."""
    driver = driver_from_proc(_read(proc_root / "driver/nvidia/version") or "")
    if proc.which("nvidia-smi") is None:
        return [], driver, None
    try:
        query = proc.run(
            ["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"],
            check=False,
            timeout=30,
        )
        summary = proc.run(["nvidia-smi"], check=False, timeout=30)
    except Exception:  # a hung or broken nvidia-smi is a host fact, not a reason to fail a run
        return [], driver, None
    gpus, query_driver = parse_gpu_query(query.stdout) if query.returncode == 0 else ([], None)
    return gpus, query_driver or driver, parse_cuda_version(summary.stdout)


def parse_gpu_query(text: str) -> tuple[list[Gpu], str | None]:
    """Parse ``nvidia-smi --query-gpu=<GPU_QUERY> --format=csv,noheader,nounits``."""
    gpus: list[Gpu] = []
    driver: str | None = None
    for line in text.strip().splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < 5:
            continue
        name, uuid, memory, cap, driver_version = cells[:5]
        gpus.append(
            Gpu(
                name=name,
                uuid=uuid,
                memory_bytes=int(float(memory)) * 1024 * 1024 if _number(memory) else None,
                compute_capability=cap if _number(cap) else None,
            )
        )
        driver = driver or (driver_version if _number(driver_version.split(".")[0]) else None)
    return gpus, driver


def parse_cuda_version(nvidia_smi_output: str) -> str | None:
    """The ``CUDA Version: 12.4`` of plain ``nvidia-smi`` (the newest CUDA the driver supports)."""
    match = re.search(r"CUDA Version\s*:\s*([\d.]+)", nvidia_smi_output)
    return match.group(1) if match else None


def driver_from_proc(text: str) -> str | None:
    """The driver version from ``/proc/driver/nvidia/version``."""
    match = re.search(r"Kernel Module(?: for [\w_]+)?\s+([\d.]+)", text)
    return match.group(1) if match else None


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
