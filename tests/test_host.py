"""nixrepro.host: the host facts Nix cannot pin, read from /proc, /etc and nvidia-smi."""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any

import pytest

from nixrepro import host
from nixrepro.host import Gpu

FIXTURES = Path(__file__).parent / "fixtures"

CPUINFO_X86 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
stepping\t: 1

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
"""

CPUINFO_ARM = """\
processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41

Hardware\t: BCM2835
Revision\t: c03111
"""

MEMINFO = """\
MemTotal:       131901232 kB
MemFree:        12345678 kB
MemAvailable:   98765432 kB
"""

OS_RELEASE = """\
PRETTY_NAME="NixOS 24.05 (Uakari)"
NAME=NixOS
ID=nixos
VERSION="24.05 (Uakari)"
"""


def fake_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --- /proc and /etc ------------------------------------------------------------------------------


def test_os_name_is_the_pretty_name_without_quotes(tmp_path: Path) -> None:
    etc = fake_tree(tmp_path, {"os-release": OS_RELEASE})
    assert host.os_name(etc) == "NixOS 24.05 (Uakari)"


def test_os_name_falls_back_to_name(tmp_path: Path) -> None:
    etc = fake_tree(tmp_path, {"os-release": 'NAME="Alpine Linux"\nID=alpine\n'})
    assert host.os_name(etc) == "Alpine Linux"


def test_os_name_without_os_release_is_the_system_name(tmp_path: Path) -> None:
    assert host.os_name(tmp_path) == os.uname().sysname


def test_cpu_model_on_x86(tmp_path: Path) -> None:
    proc = fake_tree(tmp_path, {"cpuinfo": CPUINFO_X86})
    assert host.cpu_model(proc) == "AMD EPYC 7763 64-Core Processor"


def test_cpu_model_on_arm_boards(tmp_path: Path) -> None:
    proc = fake_tree(tmp_path, {"cpuinfo": CPUINFO_ARM})
    assert host.cpu_model(proc) == "BCM2835"


def test_cpu_model_is_none_without_cpuinfo(tmp_path: Path) -> None:
    assert host.cpu_model(tmp_path) is None


def test_memory_bytes_is_memtotal_in_bytes(tmp_path: Path) -> None:
    proc = fake_tree(tmp_path, {"meminfo": MEMINFO})
    assert host.memory_bytes(proc) == 131901232 * 1024


def test_memory_bytes_is_none_without_meminfo(tmp_path: Path) -> None:
    assert host.memory_bytes(tmp_path) is None


def no_nvidia_smi_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_collect_reads_the_trees_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_nvidia_smi_on_path(monkeypatch, tmp_path)
    proc = fake_tree(tmp_path / "proc", {"cpuinfo": CPUINFO_X86, "meminfo": MEMINFO})
    etc = fake_tree(tmp_path / "etc", {"os-release": OS_RELEASE})

    info = host.collect(proc_root=proc, etc=etc)

    assert info.os == "NixOS 24.05 (Uakari)"
    assert info.cpu == "AMD EPYC 7763 64-Core Processor"
    assert info.memory_bytes == 131901232 * 1024
    assert (info.kernel, info.arch) == (os.uname().release, os.uname().machine)
    assert info.cpu_count == os.cpu_count()
    assert (info.gpus, info.nvidia_driver, info.cuda_driver) == ([], None, None)


def test_driver_loaded_but_no_nvidia_smi_still_records_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_nvidia_smi_on_path(monkeypatch, tmp_path)
    proc = fake_tree(tmp_path / "proc", {
        "driver/nvidia/version": "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.161.08  "
                                 "Tue Mar  5 22:42:15 UTC 2024\nGCC version:  gcc version 12.2.0\n",
    })
    info = host.collect(proc_root=proc, etc=tmp_path)
    assert info.nvidia_driver == "535.161.08"
    assert info.gpus == [] and info.cuda_driver is None


def test_collect_on_this_machine_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_nvidia_smi_on_path(monkeypatch, tmp_path)

    info = host.collect()

    assert info.os and info.cpu
    assert info.kernel == os.uname().release
    assert info.arch == os.uname().machine
    assert info.cpu_count == os.cpu_count() and info.cpu_count >= 1
    meminfo = Path("/proc/meminfo").read_text()
    kib = int(re.search(r"^MemTotal:\s+(\d+) kB$", meminfo, re.MULTILINE).group(1))  # type: ignore[union-attr]
    assert info.memory_bytes == kib * 1024
    assert 256 * 2**20 < info.memory_bytes < 2**46
    assert info.gpus == []
    assert info.cuda_driver is None
    if not Path("/proc/driver/nvidia/version").exists():
        assert info.nvidia_driver is None


# --- parsing nvidia-smi --------------------------------------------------------------------------


def test_parse_gpu_query_with_units_stripped() -> None:
    text = (
        "NVIDIA A100-SXM4-40GB, GPU-abc, 40960, 8.0, 535.161.08\n"
        "Tesla T4, GPU-def, 15360, 7.5, 535.161.08\n"
    )
    gpus, driver = host.parse_gpu_query(text)
    assert gpus == [
        Gpu("NVIDIA A100-SXM4-40GB", "GPU-abc", 40960 * 2**20, "8.0"),
        Gpu("Tesla T4", "GPU-def", 15360 * 2**20, "7.5"),
    ]
    assert driver == "535.161.08"


def test_parse_gpu_query_not_supported_fields_become_none() -> None:
    gpus, driver = host.parse_gpu_query("Some GPU, GPU-x, [N/A], [N/A], [N/A]\n")
    assert gpus == [Gpu("Some GPU", "GPU-x", None, None)]
    assert driver is None


def test_parse_gpu_query_of_nothing() -> None:
    assert host.parse_gpu_query("") == ([], None)


def test_parse_cuda_version_absent() -> None:
    assert host.parse_cuda_version("NVIDIA-SMI has failed because it couldn't communicate") is None


def test_driver_from_proc_absent() -> None:
    assert host.driver_from_proc("") is None


# --- nvidia-smi output samples (tests/fixtures/nvidia/README.md) ------------------------------------

NVIDIA = FIXTURES / "nvidia"
FAKE_NVIDIA_BIN = FIXTURES / "bin-fake-nvidia"
needs_capture = pytest.mark.skipif(
    not (NVIDIA / "query-gpu.csv").is_file(),
    reason="tests/fixtures/nvidia/ (captured nvidia-smi output) absent",
)


def captured(name: str) -> str:
    return (NVIDIA / name).read_text()


def captured_gpus() -> tuple[list[Gpu], str]:
    """The GPUs of query-gpu.csv read with the csv module (name, uuid, MiB, capability, driver)."""
    reader = csv.reader(io.StringIO(captured("query-gpu.csv")))
    rows = [[cell.strip() for cell in row] for row in reader if row]
    gpus = [Gpu(name, uuid, int(mib) * 2**20, cap) for name, uuid, mib, cap, _ in rows]
    return gpus, rows[0][4]


def header_value(text: str, label: str) -> str:
    """'CUDA Version: 12.4' in the header box of plain nvidia-smi."""
    return text.split(f"{label}:", 1)[1].split()[0]


@needs_capture
def test_parse_gpu_query_on_captured_h100_output() -> None:
    expected_gpus, expected_driver = captured_gpus()
    gpus, driver = host.parse_gpu_query(captured("query-gpu.csv"))
    assert gpus == expected_gpus
    assert all("H100" in gpu.name and gpu.uuid.startswith("GPU-") for gpu in gpus)
    assert driver == expected_driver


@needs_capture
def test_parse_cuda_version_on_captured_nvidia_smi() -> None:
    text = captured("nvidia-smi.txt")
    assert host.parse_cuda_version(text) == header_value(text, "CUDA Version")


@needs_capture
def test_driver_version_agrees_across_proc_nvidia_smi_and_the_query() -> None:
    _, query_driver = captured_gpus()
    assert host.driver_from_proc(captured("misc.txt")) == query_driver
    assert header_value(captured("nvidia-smi.txt"), "Driver Version") == query_driver


@needs_capture
def test_collect_reports_gpus_driver_and_cuda_from_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{FAKE_NVIDIA_BIN}:/usr/bin:/bin")
    expected_gpus, expected_driver = captured_gpus()

    info = host.collect()

    assert info.gpus == expected_gpus
    assert info.nvidia_driver == expected_driver
    assert info.cuda_driver == header_value(captured("nvidia-smi.txt"), "CUDA Version")


# --- who and where: the user and the scheduler's job ----------------------------------------------

SLURM_ARRAY_TASK = {
    "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4235", "SLURM_ARRAY_TASK_ID": "7",
    "SLURM_JOB_NODELIST": "gpu-[03-04]", "SLURM_JOB_PARTITION": "gpu",
}
SECRETS = {"SLURM_JOB_ACCOUNT_TOKEN": "tok-s3cr3t-value", "AWS_SECRET_ACCESS_KEY": "aws-s3cr3t-value",
           "KUBERNETES_SERVICE_ACCOUNT_TOKEN": "k8s-s3cr3t-value"}


def test_a_slurm_array_task_is_recorded_by_its_job_array_and_task(tmp_path: Path) -> None:
    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ={**SLURM_ARRAY_TASK, **SECRETS})
    assert info.slurm == host.SlurmJob(job_id="4242", array_job_id="4235", array_task_id="7",
                                       node_list="gpu-[03-04]", partition="gpu")
    assert info.kubernetes is None
    assert host.where(info) == (f"{info.user}@{info.hostname}, slurm job 4235_7 (job id 4242, "
                                "partition gpu, nodes gpu-[03-04])")
    assert "s3cr3t" not in repr(info)  # only the named variables reach the record


def test_a_plain_slurm_job_has_no_array_fields(tmp_path: Path) -> None:
    info = host.collect(proc_root=tmp_path, etc=tmp_path,
                        environ={"SLURM_JOB_ID": "99", "SLURM_JOB_PARTITION": " debug \n"})
    assert info.slurm == host.SlurmJob(job_id="99", partition="debug")
    assert host.where(info).endswith(", slurm job 99 (partition debug)")


def test_slurm_variables_without_a_job_id_are_no_job(tmp_path: Path) -> None:
    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ={"SLURM_JOB_PARTITION": "gpu"})
    assert info.slurm is None


def test_a_kubernetes_pod_is_named_by_its_host_name(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "train-7f9c-x2", **SECRETS}
    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ=environ)
    assert info.kubernetes == host.KubernetesPod(pod="train-7f9c-x2")
    assert info.slurm is None
    assert "s3cr3t" not in repr(info)


def test_downward_api_variables_and_an_indexed_job(tmp_path: Path) -> None:
    environ = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "HOSTNAME": "ignored", "POD_NAME": "sweep-3-abcde",
               "POD_NAMESPACE": "ml", "NODE_NAME": "node-a", "JOB_COMPLETION_INDEX": "3"}
    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ=environ)
    assert info.kubernetes == host.KubernetesPod(pod="sweep-3-abcde", namespace="ml", node="node-a",
                                                 completion_index="3")
    assert host.where(info).endswith(", pod sweep-3-abcde (namespace ml, node node-a, index 3)")


def test_outside_any_scheduler_there_is_no_job(tmp_path: Path) -> None:
    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ={"HOSTNAME": "laptop", **SECRETS})
    assert (info.slurm, info.kubernetes) == (None, None)
    assert host.where(info) == f"{info.user}@{info.hostname}"


def test_the_user_is_the_account_the_process_runs_as(tmp_path: Path) -> None:
    import pwd

    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ={"USER": "someone-else"})
    assert info.user == pwd.getpwuid(os.geteuid()).pw_name


def test_a_scheduler_fact_is_cut_to_a_bounded_length(tmp_path: Path) -> None:
    info = host.collect(proc_root=tmp_path, etc=tmp_path, environ={"SLURM_JOB_ID": "1",
                                                                   "SLURM_JOB_NODELIST": "n" * 10_000})
    assert info.slurm is not None and info.slurm.node_list == "n" * host.MAX_VALUE


def test_a_record_written_before_the_who_and_where_fields_still_loads() -> None:
    import json

    from nixrepro.record import RunRecord

    doc = json.loads((FIXTURES / "record-minimal.json").read_text())
    assert "user" not in doc["host"]
    record = RunRecord.from_dict(doc)
    assert (record.host.user, record.host.slurm, record.host.kubernetes) == ("", None, None)
    assert host.where(record.host) == f"?@{record.host.hostname}"


def test_two_tasks_of_one_array_job_are_told_apart_by_show_and_diff(project: Any) -> None:
    import json
    import sys

    runs = []
    for task in ("1", "2"):
        env = {**os.environ, **SLURM_ARRAY_TASK, "SLURM_JOB_ID": f"50{task}", "SLURM_ARRAY_TASK_ID": task,
               **SECRETS}
        result = project.nixrepro("run", "--flake", ".#env", "--", sys.executable, "-c", "pass", env=env)
        assert result.returncode == 0, result.stderr
        shown = project.nixrepro("show", "@latest", "--json")
        runs.append(json.loads(shown.stdout))
    first, second = runs
    assert first["host"]["slurm"] == {"job_id": "501", "array_job_id": "4235", "array_task_id": "1",
                                      "node_list": "gpu-[03-04]", "partition": "gpu"}
    assert second["host"]["slurm"]["array_task_id"] == "2"
    assert first["host"]["user"] and first["host"]["kubernetes"] is None
    text = project.nixrepro("show", "@latest").stdout
    assert f"  where      {first['host']['user']}@{first['host']['hostname']}, slurm job 4235_2 " in text
    diff = json.loads(project.nixrepro("diff", "@latest~1", "@latest", "--json").stdout)
    assert diff["sections"]["host"]["changes"] == [
        {"field": "slurm.job_id", "old": "501", "new": "502"},
        {"field": "slurm.array_task_id", "old": "1", "new": "2"},
    ]
    assert "slurm.array_task_id" in project.nixrepro("diff", "@latest~1", "@latest").stdout
    for run in runs:  # no variable but the named ones reaches the record
        assert "s3cr3t" not in (project.runs_dir / run["id"] / "record.json").read_text()


def test_every_host_fact_is_diffed_field_by_field_from_the_dataclass_itself() -> None:
    """diff reads the host's facts from HostInfo's fields: none is left out, and a scheduler's
    job is compared field by field."""
    import dataclasses

    from nixrepro.host import HostInfo, KubernetesPod, SlurmJob, fact_items

    host = HostInfo(os="Debian 12", kernel="6.1", arch="x86_64", cpu="cpu", cpu_count=2,
                    memory_bytes=1, slurm=SlurmJob(job_id="7", array_job_id="7", array_task_id="1",
                                                   node_list="n1", partition="gpu"))
    names = [name for name, _ in fact_items(host)]
    for f in dataclasses.fields(HostInfo):
        assert any(n == f.name or n.startswith(f.name + ".") for n in names), f.name
    assert {f"slurm.{f.name}" for f in dataclasses.fields(SlurmJob)} <= set(names)
    assert {f"kubernetes.{f.name}" for f in dataclasses.fields(KubernetesPod)} <= set(names)
    assert dict(fact_items(host))["slurm.array_task_id"] == "1"
    assert dict(fact_items(host))["kubernetes.pod"] is None
