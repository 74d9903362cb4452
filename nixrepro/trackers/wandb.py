"""Weights & Biases as the team dashboard: ``[trackers.wandb]`` makes every recorded run a W&B run.

:class:`WandbSink` is a run observer (nixrepro.trackers). ``wandb`` is imported lazily, in a
thread started when the sink is made, so its ~0.6 s import and its init overlap nixrepro's preflight
and the experiment itself; W&B's service process starts while the sink does what init would do
after it (module imports), so init itself is ~0.03 s instead of ~0.5 s. The W&B run id is the
nixrepro run id; its config holds the params and the provenance (nixrepro.trackers.provenance:
closure hash, flake.lock hash, commit, nixpkgs rev, data versions, GPU/driver, every host fact);
metrics stream live from metrics.jsonl with their steps; the record and logs are attached as files;
data inputs and outputs become reference artifacts, so W&B's lineage graph shows them.

Everything W&B writes lives under ``.nixrepro/`` (run directories, cache, staging), never in the work
tree. A W&B failure, at init or mid-run, is one warning and never touches the local record: the
sink raises :class:`TrackerError`, and the observer machinery drops it for the rest of the run.
Documented in docs/trackers.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from .. import codec
from ..errors import TrackerError, WandbSyncError
from ..metrics import MetricPoint
from ..parallel import Background
from . import TrackerContext, attached_files, describe, reachable
from .provenance import nixpkgs_rev as nixpkgs_rev  # (where it was; tests and callers use it)
from .provenance import provenance
from .worker import WorkerSink

if TYPE_CHECKING:  # the sink's module stays light: made before the run path is imported
    from ..record import DataVersion, RunRecord

WANDB_HOME = "wandb"  # .nixrepro/wandb: cache, artifact staging; runs in .nixrepro/wandb/*-run-*
DEFAULT_BASE_URL = "https://api.wandb.ai"
TAG_MAX = 64  # W&B refuses longer tags
STEP_MAX = 2**63 - 1
MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class Settings:
    """``[trackers.wandb]`` (or the older ``[tracker] kind = "wandb"``)."""

    project: str | None = None  # default: WANDB_PROJECT, else the repository's directory name
    entity: str | None = None
    mode: str = "online"  # online | offline | disabled; the WANDB_MODE variable wins
    job_type: str | None = None
    group: str | None = None  # default for runs without --repeat (a repeat group is its own group)
    system_metrics: bool = True  # W&B's CPU/GPU/memory charts (its monitor process)

    def check(self) -> tuple[str, str] | None:
        if self.mode not in MODES:
            return "mode", f"must be one of {', '.join(MODES)}, not {self.mode!r}"
        return None


def enabled(settings: Settings, environ: Mapping[str, str]) -> bool:
    """False for ``mode = "disabled"`` or WANDB_MODE=disabled: no W&B, not even its import."""
    return resolve_mode(settings, environ) != "disabled"


def make(settings: Settings, context: TrackerContext) -> WandbSink | None:
    """The W&B sink of one run; None when W&B is disabled (``mode``, or WANDB_MODE=disabled)."""
    sink = WandbSink(settings, context.store_root, default_project=context.repo_root.name,
                     environ=context.environ, note=context.note, remote=context.remote,
                     secret_names=context.secret_names)
    return None if sink.mode == "disabled" else sink


def sync(store_root: Path, dry_run: bool) -> tuple[list[str], list[str]]:
    """``nixrepro sync``'s W&B step: `wandb sync` of the runs kept offline."""
    return [str(p.relative_to(store_root.parent))
            for p in sync_offline_runs(store_root, dry_run=dry_run)], []


def resolve_mode(config: Settings, environ: Mapping[str, str]) -> str:
    """WANDB_MODE wins over ``mode`` (W&B's own aliases: dryrun = offline, run = online)."""
    raw = (environ.get("WANDB_MODE") or config.mode).strip().lower()
    return {"dryrun": "offline", "run": "online"}.get(raw, raw if raw in MODES else config.mode)


def run_tags(record: RunRecord) -> list[str]:
    tags = (["dev"] if record.dev else []) + ([record.code.branch] if record.code.branch else [])
    tags += record.tags
    return list(dict.fromkeys(tag[:TAG_MAX] for tag in tags if tag))


def wandb_step(step: Any) -> int | None:
    """A point's step as W&B takes it (an integer of 0 to 2^63-1), else None (the point then
    takes the step after the last): a writer's "3", 2.5 or 10^30 would stop W&B's run."""
    if isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= STEP_MAX:
        return step
    return None


def _wandb_value(value: Any) -> Any:
    """metrics.jsonl keeps NaN and inf as strings (JSON has no such numbers); W&B takes floats."""
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


@contextlib.contextmanager
def wandb_environ(home: Path) -> Iterator[None]:
    """W&B's cache and staging under ``home`` (unless the user chose their own), for one call.

    ``os.environ`` is put back afterwards, including the WANDB_SERVICE token wandb.init leaves in
    it: the next run's command must not inherit nixrepro's W&B service.
    """
    wanted = {"WANDB_CACHE_DIR": home / "cache", "WANDB_DATA_DIR": home / "data",
              "WANDB_ARTIFACT_DIR": home / "artifacts"}
    names = [*wanted, "WANDB_SERVICE"]
    with _ENVIRON_LOCK:  # pipeline stages in threads: one sink's save and restore at a time
        saved = {name: os.environ.get(name) for name in names}
        for name, path in wanted.items():
            os.environ.setdefault(name, str(path))
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


_ENVIRON_LOCK = threading.RLock()
_ARGV_LOCK = threading.Lock()
_LIVE: set[int] = set()  # the sinks of this process whose W&B run is live (pipeline stages, -j N)


@contextlib.contextmanager
def _program_argv(argv: list[str]) -> Iterator[None]:
    """``sys.argv`` is the recorded command while wandb.init reads it.

    W&B keeps ``sys.argv[1:]`` as the run's args (a computed setting, not one it lets be set) in
    its offline file, and `wandb sync` uploads it: there, nixrepro's own command line would hold
    every --name, --tag and -p as typed, secrets included.
    """
    with _ARGV_LOCK:
        saved = sys.argv
        sys.argv = list(argv) or [""]
        try:
            yield
        finally:
            sys.argv = saved


def _import_wandb() -> Any:
    import wandb

    return wandb


# imported by wandb.init at its very end (Run._detect_and_apply_job_inputs), on every run
LAUNCH_INPUTS = "wandb.sdk.launch.inputs.internal"


def _preload(module: str) -> None:
    """Import ``module`` now, if this wandb has it (an import it makes later anyway)."""
    import importlib

    with contextlib.suppress(Exception):
        importlib.import_module(module)


def _service_starter() -> Callable[[], Any] | None:
    """What wandb.init calls to start W&B's service process (``ensure_service`` of the process's
    W&B singleton), or None for a wandb without it (init then starts the service itself).

    Not ``wandb.setup()``: it holds the singleton's lock while the service starts, and a
    service that fails to start asks for the singleton again to report it (wandb 0.31), so that
    failure would hang instead of being W&B's one warning.
    """
    try:
        from wandb.sdk import wandb_setup

        ensure: Callable[[], Any] = wandb_setup.singleton().ensure_service
    except Exception:
        return None
    return ensure


def _note(message: str) -> None:
    sys.stderr.write(f"nixrepro: {message}\n")
    sys.stderr.flush()


class WandbSink(WorkerSink):
    """One W&B run for one nixrepro run (make a new sink per run)."""

    name = "wandb"
    shown = "W&B"

    def __init__(
        self,
        config: Settings,
        store_root: Path,
        *,
        default_project: str,
        environ: Mapping[str, str] | None = None,
        note: Callable[[str], None] = _note,
        remote: str | None = None,
        secret_names: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        environ = os.environ if environ is None else environ
        self._config = config
        self._secret_names = secret_names  # [secrets] extra_names, for the logs it scrubs
        self._remote = remote  # the remote run store, named in the provenance
        self._store_root = store_root
        self._home = store_root / WANDB_HOME
        self._mode = resolve_mode(config, environ)
        self._base_url = environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
        self._project = config.project or environ.get("WANDB_PROJECT") or default_project
        self._note = note
        self._wandb = Background(_import_wandb)  # starts now: overlaps the preflight
        self._run: Any = None
        self._record_id: str | None = None  # the W&B run's id, its directory's name
        self._last_step: int | None = None

    @property
    def mode(self) -> str:
        return self._mode

    # --- RunObserver (started and logged: WorkerSink's) -----------------------------------------

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self._all_sent()
        run = self._run
        try:
            with wandb_environ(self._home):
                run.config.update({"nixrepro": provenance(record, self._remote)}, allow_val_change=True)
                run.summary.update(self._summary(record))
                for path in attached_files(run_dir):
                    run.save(str(path), base_path=str(run_dir), policy="now")
                self._log_data(run, record)
                run.finish(exit_code=record.exit_code if record.exit_code is not None else 1)
            _LIVE.discard(id(self))
        except Exception as exc:
            self._fail("W&B failed at the end of the run", exc)
            raise TrackerError(self._error or describe(exc)) from exc
        finally:
            self._scrub_logs(record.id)
        info = {"run_id": run.id, "project": self._project, "mode": self._mode,
                "url": getattr(run, "url", None), "dir": self._run_dir_of(run)}
        if self._config.entity:
            info["entity"] = self._config.entity
        return info

    def abandoned(self) -> None:
        """nixrepro went away before the run's end (killed, or it dropped this tracker): what
        was logged is sent, and the W&B run is finished as failed instead of left running."""
        self._send_the_rest()
        run = self._run
        if run is not None and self._error is None:
            with wandb_environ(self._home):
                run.finish(exit_code=1)
            _LIVE.discard(id(self))
        self._scrub_logs(self._record_id)

    def _scrub_logs(self, run_id: str | None) -> None:
        """W&B's own logs of the run without the secrets of this process's environment and the
        credentials of any URL: wandb-core logs every URL it retries, WANDB_BASE_URL's user and
        password included."""
        if run_id is None:
            return
        from . import scrub

        for path in self._home.glob(f"*-{run_id}/logs/*.log"):
            with contextlib.suppress(OSError):
                target = path.resolve()
                if self._home.resolve() not in target.parents:
                    continue  # a log of the user's own (WANDB_CACHE_DIR elsewhere)
                text = target.read_bytes().decode("utf-8", "surrogateescape")
                clean = scrub(text, self._secret_names)
                if clean != text:
                    temporary = target.with_name(target.name + ".scrubbed")
                    temporary.write_bytes(clean.encode("utf-8", "surrogateescape"))
                    os.replace(temporary, target)

    # --- on the worker thread (nixrepro.trackers.worker): init, then every point in turn -------

    def _start(self, record: RunRecord) -> None:
        self._record_id = record.id
        wandb = self._wandb.result()
        # wandb-core starts now, while this thread does what wandb.init would do after it:
        # the service's start is mostly a sleep (W&B looks for its port file, then waits
        # 0.2 s), and init ends by importing W&B Launch's staged inputs (~0.25 s of Python)
        ensure = _service_starter()
        service = None if ensure is None else Background(self._start_service, ensure,
                                                         record.command.argv)
        _preload(LAUNCH_INPUTS)
        if self._mode == "online" and not reachable(self._base_url):
            self._mode = "offline"
            from ..redact import scrub_url

            self._note(f"W&B ({scrub_url(self._base_url)}) is unreachable; the W&B run is kept "
                       "offline, `nixrepro sync` uploads it later.")
        if service is not None:
            service.result()  # a service that cannot start is W&B's failure to start
        with wandb_environ(self._home), _program_argv(record.command.argv):
            self._run = wandb.init(**self._init_args(wandb, record))
        _LIVE.add(id(self))

    def _send(self, points: list[MetricPoint]) -> None:
        """One run.log a point, each with its step (W&B's history keeps one row a step)."""
        for point in points:
            values = {key: _wandb_value(value) for key, value in point.metrics.items()}
            step = wandb_step(point.step)
            if step is None:  # the step after the last one, as MLflow's sink numbers it (W&B's
                # own numbering would log it into the last step's row, over its values)
                step = 0 if self._last_step is None else min(self._last_step + 1, STEP_MAX)
            self._last_step = step if self._last_step is None else max(step, self._last_step)
            self._run.log(values, step=step)

    def _start_service(self, ensure: Callable[[], Any], argv: list[str]) -> None:
        """W&B's service process, in the environment wandb.init will have."""
        with wandb_environ(self._home), _program_argv(argv):
            ensure()

    def _init_args(self, wandb: Any, record: RunRecord) -> dict[str, Any]:
        wanted: dict[str, Any] = {
            "console": "off",  # nixrepro's own output is not the experiment's; its logs are attached
            "silent": True,
            "save_code": False,
            "disable_code": True,
            "disable_git": True,  # the commit and remote below come from the record
            "git_commit": record.code.commit,
            "git_remote_url": record.code.remote,
            "x_save_requirements": False,  # nixrepro's Python packages, not the experiment's
            "x_disable_stats": not self._config.system_metrics,
            # a run of its own even while another stage's is live in this process (-j N);
            # wandb.init would return that one otherwise
            "reinit": "create_new",
            # the command as recorded (secrets scrubbed), never nixrepro's own command line
            "program": record.command.argv[0] if record.command.argv else None,
        }
        known = getattr(wandb.Settings, "model_fields", None)
        settings = {k: v for k, v in wanted.items() if known is None or k in known}
        self._home.mkdir(parents=True, exist_ok=True)
        return {
            "id": record.id,
            "project": self._project,
            "entity": self._config.entity,
            "mode": self._mode,
            "dir": str(self._store_root),
            "name": record.name,
            "notes": " ".join(record.command.argv),
            "group": record.group or self._config.group,
            "job_type": self._config.job_type,
            "tags": run_tags(record),
            "config": {**record.params, "nixrepro": provenance(record, self._remote)},
            "settings": _settings(wandb, settings),
        }

    def _summary(self, record: RunRecord) -> dict[str, Any]:
        values = {key: _wandb_value(value) for key, value in record.metrics.items()}
        values["nixrepro"] = {"status": record.status, "exit_code": record.exit_code,
                              "signal": record.signal, "duration_s": record.duration_s}
        return values

    def _log_data(self, run: Any, record: RunRecord) -> None:
        """Inputs are used, outputs logged, as reference artifacts pinned to their version id.

        One that W&B refuses is one note, and the rest of the run (the other artifacts, files,
        summary, exit) still reaches W&B: a data artifact is a link, not the run.
        """
        wandb = self._wandb.result()
        for direction, versions in (("input", record.data.inputs), ("output", record.data.outputs)):
            for version in versions:
                if version.pending or not version.version_id:
                    continue  # not uploaded yet: there is no version to point at
                try:
                    self._log_version(wandb, run, direction, version)
                except Exception as exc:
                    self._note(f"warning: W&B did not take the {direction} {version.uri} as an "
                               f"artifact ({describe(exc)}); the record keeps its version.")

    def _log_version(self, wandb: Any, run: Any, direction: str, version: DataVersion) -> None:
        artifact = data_artifact(wandb, version)
        if direction == "output":
            run.log_artifact(artifact)
        elif self._mode != "offline":
            run.use_artifact(artifact)
        elif hasattr(run, "_log_artifact"):
            # use_artifact refuses offline; this is what it does online for a new artifact,
            # and `wandb sync` replays it as a use once the artifact is committed.
            run._log_artifact(artifact, is_user_created=True, use_after_commit=True)

    def _run_dir_of(self, run: Any) -> str | None:
        sync_dir = getattr(getattr(run, "settings", None), "sync_dir", None)
        if not sync_dir:
            return None
        with contextlib.suppress(ValueError):
            return str(Path(sync_dir).relative_to(self._store_root.parent))
        return str(sync_dir)

    def _fail(self, what: str, exc: BaseException) -> None:
        """Remember the failure (reported once by the observers) and silence wandb's exit hooks."""
        self._error = f"{what}: {describe(exc)}"
        wandb = sys.modules.get("wandb")
        if self._run is not None:
            with contextlib.suppress(Exception):
                self._run.finish(exit_code=1)
        _LIVE.discard(id(self))
        if wandb is not None and not _LIVE:  # (another stage's live W&B run keeps the service)
            # teardown unregisters wandb's atexit hook first, so a dead service prints no traceback
            with contextlib.suppress(Exception):
                wandb.teardown()
        self._scrub_logs(self._record_id)


def _settings(wandb: Any, settings: dict[str, Any]) -> Any:
    """wandb.Settings of ``settings``; without ``reinit`` for a wandb whose reinit is a bool."""
    try:
        return wandb.Settings(**settings)
    except Exception:
        if "reinit" not in settings:
            raise
        return wandb.Settings(**{k: v for k, v in settings.items() if k != "reinit"})


def artifact_name(uri: str) -> str:
    """A W&B artifact name for a data URI: the same URI is the same artifact across runs."""
    parsed = urlparse(uri)
    text = f"{parsed.netloc}{parsed.path}".strip("/") or uri
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[-128:] or "data"


def data_artifact(wandb: Any, version: DataVersion) -> Any:
    """A reference artifact for one data version: the URI, its version id, sha256 and size."""
    parsed = urlparse(version.uri)
    artifact = wandb.Artifact(
        artifact_name(version.uri), type="dataset",
        metadata={key: value for key, value in codec.encode(version).items() if key != "pending"},
    )
    name = Path(parsed.path).name or artifact_name(version.uri)
    ref = f"{version.uri}?versionId={version.version_id}"
    if parsed.scheme == "s3":
        entries = artifact.add_reference(ref, name=name, checksum=False)
    else:
        # W&B's handler for file:// wants the URI to be a file or directory, but a version of the
        # file store lives elsewhere (nixrepro.datastore): the entry is made as its handlers do.
        from wandb.sdk.artifacts.artifact_manifest_entry import ArtifactManifestEntry
        from wandb.sdk.lib.paths import LogicalPath

        entries = [ArtifactManifestEntry(path=LogicalPath(name), ref=ref,
                                         digest=version.sha256 or ref)]
        artifact.manifest.add_entry(entries[0])
    for entry in entries:
        # W&B's own S3 handler keeps the version in extra.versionID; without a checksum pass (no
        # network needed) the digest would be the bare URI, the same for every version.
        entry.extra["versionID"] = version.version_id
        if version.sha256:
            entry.extra["sha256"] = version.sha256
        entry.digest = version.sha256 or f"{version.uri}@{version.version_id}"
        if version.size is not None:
            entry.size = version.size
    return artifact


# --- `nixrepro sync`: upload the W&B runs that were kept offline ----------------------------------


def pending_offline_runs(store_root: Path) -> list[Path]:
    """Offline W&B run directories under the run store that `wandb sync` has not uploaded yet."""
    wandb_dir = store_root / WANDB_HOME
    if not wandb_dir.is_dir():
        return []
    pending = []
    for run_dir in sorted(wandb_dir.glob("offline-run-*")):
        logs = [p for p in run_dir.glob("run-*.wandb")]
        if logs and not all(p.with_name(p.name + ".synced").exists() for p in logs):
            pending.append(run_dir)
    return pending


def sync_offline_runs(store_root: Path, dry_run: bool = False) -> list[Path]:
    """Run `wandb sync` on every pending offline run; returns the run directories it synced."""
    from .. import proc

    pending = pending_offline_runs(store_root)
    if pending and not dry_run:
        argv = [sys.executable, "-m", "wandb", "sync", *map(str, pending)]
        result = proc.run(argv, check=False)
        if result.returncode != 0:
            tail = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            reason = f" ({tail[-1][:200]})" if tail else ""
            raise WandbSyncError(
                f"`wandb sync` could not upload {len(pending)} offline W&B run(s){reason}; check "
                "`wandb login` and the network, then run `nixrepro sync` again."
            )
    return pending
