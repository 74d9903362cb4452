"""Host facts Nix cannot pin: OS, kernel, CPU, memory, GPUs and the NVIDIA driver; and who ran
the run where: the user, the host name and the scheduler's job (Slurm, Kubernetes).

Each collector drops out quietly when its source is absent (no nvidia-smi: no GPUs, driver null),
like sacred's host-info getters: a missing tool is a fact about the host, not an error.

The scheduler facts come from a fixed list of variables (:data:`SLURM_VARIABLES`,
:data:`KUBERNETES_VARIABLES`), never from a scan of the environment: a job's environment holds
tokens, and only the names listed here can reach a record.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from . import proc
from .codec import frozen

GPU_QUERY = "name,uuid,memory.total,compute_cap,driver_version"


@frozen
class Gpu:
    name: str
    uuid: str
    memory_bytes: int | None
    compute_capability: str | None


@frozen
class SlurmJob:
    """The Slurm job a run ran in: an array job's tasks share ``array_job_id`` and differ in
    ``array_task_id`` (each task also has a ``job_id`` of its own)."""

    job_id: str | None = None
    array_job_id: str | None = None
    array_task_id: str | None = None
    node_list: str | None = None  # Slurm's compressed form, "gpu-[01-04]"
    partition: str | None = None


@frozen
class KubernetesPod:
    """The pod a run ran in. ``pod`` is the downward API's POD_NAME, or else HOSTNAME (a pod's host
    name is its name); an Indexed Job's pods differ in ``completion_index``."""

    pod: str | None = None
    namespace: str | None = None
    node: str | None = None
    completion_index: str | None = None


SLURM_VARIABLES: dict[str, str] = {
    "job_id": "SLURM_JOB_ID",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "node_list": "SLURM_JOB_NODELIST",
    "partition": "SLURM_JOB_PARTITION",
}
# The downward API has no fixed names: these are the ones Kubernetes' own examples use (POD_NAME,
# MY_POD_NAME...). JOB_COMPLETION_INDEX is set by Kubernetes itself in an Indexed Job's pods.
KUBERNETES_VARIABLES: dict[str, tuple[str, ...]] = {
    "pod": ("POD_NAME", "MY_POD_NAME", "KUBERNETES_POD_NAME"),
    "namespace": ("POD_NAMESPACE", "MY_POD_NAMESPACE", "KUBERNETES_NAMESPACE"),
    "node": ("NODE_NAME", "MY_NODE_NAME", "KUBERNETES_NODE_NAME"),
    "completion_index": ("JOB_COMPLETION_INDEX",),
}
MAX_VALUE = 256  # a scheduler fact longer than this is cut: a record is not a place for a blob


@frozen
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
    user: str = ""  # the account the run ran as ("" in records older than this field)
    slurm: SlurmJob | None = None  # set inside a Slurm job
    kubernetes: KubernetesPod | None = None  # set inside a Kubernetes pod


def collect(proc_root: Path = Path("/proc"), etc: Path = Path("/etc"),
            environ: Mapping[str, str] | None = None) -> HostInfo:
    """Read the host facts of this machine (the scheduler's from ``environ``, default os.environ)."""
    env = os.environ if environ is None else environ
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
        user=user_name(env),
        slurm=slurm_job(env),
        kubernetes=kubernetes_pod(env),
    )


def user_name(environ: Mapping[str, str]) -> str:
    """The name of the account the process runs as: its passwd entry, else LOGNAME or USER (a
    container's uid often has no passwd entry), else ``uid <n>``."""
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, OSError):
        pass
    for name in ("LOGNAME", "USER"):
        value = _fact(environ.get(name))
        if value:
            return value
    return f"uid {os.geteuid()}"


def slurm_job(environ: Mapping[str, str]) -> SlurmJob | None:
    """The Slurm job from its variables; None outside Slurm (no SLURM_JOB_ID)."""
    values = {key: _fact(environ.get(name)) for key, name in SLURM_VARIABLES.items()}
    if values["job_id"] is None:
        return None
    return SlurmJob(**values)


def kubernetes_pod(environ: Mapping[str, str]) -> KubernetesPod | None:
    """The pod from the downward-API variables; None outside Kubernetes (no
    KUBERNETES_SERVICE_HOST, which Kubernetes sets in every pod, and no POD_NAME)."""
    values = {key: next((v for v in map(_fact, (environ.get(n) for n in names)) if v), None)
              for key, names in KUBERNETES_VARIABLES.items()}
    in_pod = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    if not in_pod and values["pod"] is None:
        return None
    if values["pod"] is None:
        values["pod"] = _fact(environ.get("HOSTNAME")) or platform.node() or None
    return KubernetesPod(**values)


def _fact(value: str | None) -> str | None:
    """A variable's value as a record keeps it: stripped, at most MAX_VALUE characters, None if empty."""
    if value is None:
        return None
    value = value.strip()
    return value[:MAX_VALUE] or None


# The dataclass held by each HostInfo field that holds one (None where unset), so that its
# facts are listed one by one; declared beside the fields it describes.
_NESTED: dict[str, type] = {"slurm": SlurmJob, "kubernetes": KubernetesPod}


def fact_items(info: HostInfo) -> list[tuple[str, Any]]:
    """Every host fact as (name, value), read from HostInfo's own fields in their order:
    ``os``, ..., ``slurm.job_id``, ... (None where the job is unset), ``gpus`` as one
    ``"NAME (CAPABILITY)"`` list. diff compares these, so a new field is diffed with no edit there."""
    found: list[tuple[str, Any]] = []
    for f in fields(HostInfo):
        value = getattr(info, f.name)
        if f.name in _NESTED:
            found.extend((f"{f.name}.{sub.name}", getattr(value, sub.name) if value is not None else None)
                         for sub in fields(_NESTED[f.name]))
        elif f.name == "gpus":
            found.append((f.name, [f"{g.name} ({g.compute_capability})" if g.compute_capability
                                   else str(g.name) for g in value]))
        else:
            found.append((f.name, value))
    return found


def where(info: HostInfo) -> str:
    """Who ran it where, in one line: ``alice@node-3, slurm job 1234_7 (partition gpu, nodes
    node-[3-4])`` or ``root@train-0, pod train-0 (namespace ml, node n1, index 0)``."""
    text = f"{info.user or '?'}@{info.hostname or '?'}"
    job = info.slurm
    if job is not None:
        ident = f"{job.array_job_id}_{job.array_task_id}" if job.array_job_id and job.array_task_id \
            else str(job.job_id)
        extra = [f"job id {job.job_id}" if ident != job.job_id else None,
                 f"partition {job.partition}" if job.partition else None,
                 f"nodes {job.node_list}" if job.node_list else None]
        shown = [e for e in extra if e]
        text += f", slurm job {ident}" + (f" ({', '.join(shown)})" if shown else "")
    pod = info.kubernetes
    if pod is not None:
        extra = [f"namespace {pod.namespace}" if pod.namespace else None,
                 f"node {pod.node}" if pod.node else None,
                 f"index {pod.completion_index}" if pod.completion_index is not None else None]
        shown = [e for e in extra if e]
        text += f", pod {pod.pod}" + (f" ({', '.join(shown)})" if shown else "")
    return text


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
