"""Running a pipeline: each stage a recorded run, skipped when nothing it depends on changed.

A stage's cache key is the sha256 of its command, its params, the closure hash of its environment,
the git tree ids of the files it depends on (the whole commit by default) and the exact version
ids of its input data. A succeeded run with the same key is reused: its outputs (uri + version id)
feed the next stages and nothing runs. Change one store path of the environment and the key
changes, which is what DVC's stage cache cannot see.

Stages are linked by data: an input URI that another stage declares as an output makes that stage
run first (``after`` adds links that carry no data).

The scheduler never waits on a worker that cannot report: every stage's thread settles an outcome
whatever it raises, and an unexpected exception stops the pipeline with an error. SIGINT, SIGTERM
and SIGHUP stop it too: no new stage starts, the running ones get the signal (forward.py) and are
waited for, so each is recorded with how it ended.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from ..closure import cached_closure
from ..codec import canonical_sha256
from ..config import Config, DataConfig
from ..errors import ConfigError, NixreproError, RefusedError
from ..fsutil import atomic_write
from ..git import GitRepo, format_dirty
from ..nix import Nix
from ..record import RunRecord, StageInfo
from ..runstore import RunStore
from . import envcache
from .forward import SignalForwarder
from .stages import Pipeline, Stage

if TYPE_CHECKING:
    from ..datastore.ops import Data

State = Literal["ran", "skipped", "failed", "interrupted", "not run"]
CACHE_DIR = "stage-cache"
LAST_FILE = "pipeline-last.json"
# How often the waiting scheduler looks at its workers and re-forwards a signal to new children.
POLL_S = 0.1


class DataResolver(Protocol):
    """What the pipeline needs of the data store: the current version of an input."""

    def latest_version(self, uri: str) -> str: ...


@dataclass
class StageOutcome:
    name: str
    state: State
    run_id: str | None = None
    reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)  # uri -> version id
    key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "state": self.state, "run": self.run_id, "reason": self.reason,
                "outputs": self.outputs, "cache_key": self.key}


def cache_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the key's parts (see the module docstring)."""
    return canonical_sha256(parts)


class PipelineRunner:
    """Decides, stage by stage, whether to reuse a cached run or to run, and runs."""

    def __init__(
        self,
        repo: GitRepo,
        config: Config,
        pipeline: Pipeline,
        *,
        nix: Nix,
        resolver: DataResolver,
        execute: Callable[[Stage, str, StageInfo, dict[str, str]], RunRecord],
        dev: bool = False,
        force: bool = False,
    ) -> None:
        self.repo, self.config, self.pipeline = repo, config, pipeline
        self.nix, self.resolver, self.execute = nix, resolver, execute
        self.dev, self.force = dev, force
        self.store = RunStore.for_repo(repo.root)
        self._envs: dict[str, str] = {}
        self._closures: dict[str, str] = {}
        self._nix_version: str | None = None
        self._memo = threading.Lock()
        self.signals = SignalForwarder()
        self.faults: list[tuple[str, BaseException]] = []  # (stage, what its worker raised)
        snapshot = repo.snapshot()
        self.commit = snapshot.commit
        if snapshot.changes and not dev:
            raise RefusedError(
                f"the work tree has uncommitted changes ({format_dirty(snapshot.changes)}); commit "
                "them, or pass --dev to run the pipeline as development runs."
            )
        self.dev_diff = (
            hashlib.sha256(repo.diff_with_untracked()).hexdigest() if snapshot.changes else None
        )

    # -- the parts of a cache key ------------------------------------------------------------

    def env_path(self, stage: Stage) -> str:
        ref = stage.env or self.config.run.flake
        if ref is None:
            raise ConfigError(
                f"stage {stage.name!r} has no environment; set env = \".#env\" in [stages.{stage.name}] "
                "or [run] flake in nixrepro.toml."
            )
        with self._memo:
            if ref not in self._envs:
                self._envs[ref] = ref if ref.startswith("/nix/store/") else self._built(ref)
            return self._envs[ref]

    def _built(self, ref: str) -> str:
        """``nix build`` of ``ref``, or the out path it was built to before when nothing that its
        evaluation reads has changed since (envcache: the commit of a clean tree, the lock, nix)."""
        parts = envcache.key(self.repo, self.commit, ref, self.nix, self._version())
        if parts is not None and (known := envcache.lookup(parts)) is not None:
            return known
        built = self.nix.build(ref, cwd=self.repo.root)
        # kept only when what was built is the commit's and its committed flake.lock's
        if parts is not None and self.repo.git("rev-parse", "HEAD").strip() == self.commit and \
                envcache.clean(self.repo) and envcache.locked_to_commit(self.repo, self.commit, ref,
                                                                        self.nix):
            envcache.remember(parts, built)
        return built

    def _version(self) -> str:
        if self._nix_version is None:  # once: it chooses path-info's --json-format, keys envcache
            self._nix_version = self.nix.version()
        return self._nix_version

    def closure_hash(self, env_path: str) -> str:
        with self._memo:
            if env_path not in self._closures:
                version = self._version()
                # the closure cache nixrepro run keeps: nix is asked once per environment
                self._closures[env_path] = cached_closure(
                    env_path, version, lambda: self.nix.closure(env_path, version)).hash
            return self._closures[env_path]

    def key_parts(
        self, stage: Stage, env_path: str, inputs: dict[str, str], done: dict[str, StageOutcome]
    ) -> dict[str, Any]:
        return {
            # an upstream stage that changes invalidates this one, even through `after` alone
            "upstream": {up: done[up].key for up in sorted(self.pipeline.upstream[stage.name])
                         if up in done},
            "cmd": stage.argv,
            "params": stage.params,
            "closure_hash": self.closure_hash(env_path),
            "code": self.repo.tree_ids(stage.deps),
            "dev_diff": self.dev_diff,
            "inputs": inputs,
            "outputs": [out.uri for out in stage.outputs],
        }

    # -- the stage cache -----------------------------------------------------------------------

    def cached_run(self, key: str, stage: Stage) -> RunRecord | None:
        """The succeeded run recorded under ``key``, if it stored every output ``stage`` declares.

        The declared outputs are the current stage's, not those of the stage named in the record:
        the key holds no stage name, so a renamed stage with an unchanged key reuses its run.
        """
        link = self.store.root / CACHE_DIR / key
        try:
            run_id = link.read_text().strip()
            if not run_id.isalnum():  # a cache entry names a run, never a path
                return None
            record = self.store.load(run_id)
            outputs = {o.uri: o for o in record.data.outputs}
            usable = record.status == "succeeded" and all(
                (found := outputs.get(o.uri)) is not None and not found.pending and found.version_id
                for o in stage.outputs
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, NixreproError):
            return None  # an unreadable cache entry or record is a miss: the stage runs again
        return record if usable else None

    def remember(self, key: str, record: RunRecord) -> None:
        atomic_write(self.store.root / CACHE_DIR / key, record.id + "\n")

    # -- running -------------------------------------------------------------------------------

    def run(self, targets: Sequence[str] = (), jobs: int = 1) -> list[StageOutcome]:
        """Run the targets and what they depend on; the outcomes, in run order, also in LAST_FILE.

        After a signal (:attr:`signals`) or an internal error (:attr:`faults`) no new stage
        starts and the running ones are waited for; the caller reports either.
        """
        names = self.pipeline.closure_of(targets or self.pipeline.stages)
        with self.signals.installed():
            outcomes = self._schedule(names, max(jobs, 1))
        result = [outcomes[name] for name in names]
        atomic_write(self.store.root / LAST_FILE, json.dumps([o.to_dict() for o in result], indent=2))
        return result

    def _stop_reason(self) -> str | None:
        if self.signals.stopping.is_set():
            return f"the pipeline was interrupted ({self.signals.signal_name}) before it started"
        if self.faults:
            return f"the pipeline stopped on an internal error in stage {self.faults[0][0]!r}"
        return None

    def _schedule(self, names: list[str], jobs: int) -> dict[str, StageOutcome]:
        outcomes: dict[str, StageOutcome] = {}
        cond = threading.Condition()
        running: dict[str, threading.Thread] = {}

        def settle(name: str, outcome: StageOutcome) -> None:  # with cond held
            outcomes[name] = outcome
            running.pop(name, None)
            if outcome.state not in ("ran", "skipped"):
                for below in self.pipeline.downstream(name):
                    if below in names and below not in outcomes:
                        outcomes[below] = StageOutcome(below, "not run",
                                                       reason=f"{name} {outcome.state}")
            cond.notify_all()

        def work(name: str) -> None:
            outcome = StageOutcome(name, "failed", reason="nixrepro stopped inside the stage")
            try:
                outcome = self.run_stage(self.pipeline.stages[name], outcomes)
            except BaseException as exc:  # whatever it is, the scheduler must hear of it
                self.faults.append((name, exc))
                outcome = StageOutcome(name, "failed",
                                       reason=f"internal error: {type(exc).__name__}: {exc}")
            finally:
                with cond:
                    settle(name, outcome)

        with cond:
            while len(outcomes) < len(names):
                waiting = [n for n in names if n not in outcomes and n not in running]
                stop = self._stop_reason()
                if stop is not None:
                    for name in waiting:
                        outcomes[name] = StageOutcome(name, "not run", reason=stop)
                    waiting = []
                startable = [n for n in waiting if all(
                    up in outcomes for up in self.pipeline.upstream[n] if up in names)]
                for name in startable[: max(0, jobs - len(running))]:
                    thread = threading.Thread(target=work, args=(name,), daemon=True,
                                              name=f"stage {name}")
                    running[name] = thread
                    try:
                        thread.start()
                    except RuntimeError as exc:  # no thread to be had: that stage cannot run
                        self.faults.append((name, exc))
                        settle(name, StageOutcome(name, "failed", reason=f"internal error: {exc}"))
                for name, thread in list(running.items()):
                    if not thread.is_alive() and thread.ident is not None:
                        # work() always settles; this is the guard that no bug can turn into a hang
                        settle(name, StageOutcome(name, "failed", reason="its worker ended without "
                                                  "an outcome"))
                if not running and len(outcomes) < len(names) and not startable:
                    for name in names:  # nothing runs and nothing can start: never wait forever
                        outcomes.setdefault(name, StageOutcome(name, "not run",
                                                               reason="nothing it waits for ran"))
                    break
                if len(outcomes) < len(names):
                    cond.wait(POLL_S)
                    self.signals.reforward()  # a command started after the signal gets it too
        for thread in running.values():
            thread.join()
        return outcomes

    def run_stage(self, stage: Stage, done: dict[str, StageOutcome]) -> StageOutcome:
        try:
            inputs = self.input_versions(stage, done)
            env_path = self.env_path(stage)
            parts = self.key_parts(stage, env_path, inputs, done)
        except NixreproError as exc:
            if self.signals.stopping.is_set():  # nix or git was stopped by the signal
                return StageOutcome(stage.name, "not run", reason=self._stop_reason() or "")
            return StageOutcome(stage.name, "failed", reason=str(exc))
        key = cache_key(parts)
        cached = None if self.force else self.cached_run(key, stage)
        if cached is not None:
            reason = "nothing it depends on changed"
            if cached.stage is not None and cached.stage.name != stage.name:
                reason += f" (its run was recorded as stage {cached.stage.name!r})"
            return StageOutcome(stage.name, "skipped", cached.id, reason,
                                {o.uri: o.version_id or "" for o in cached.data.outputs}, key)
        depends_on = sorted({run_id for up in self.pipeline.upstream[stage.name]
                             if up in done and (run_id := done[up].run_id)})
        info = StageInfo(name=stage.name, cache_key=key, key_parts=parts, depends_on=depends_on)
        stop = self._stop_reason()
        if stop is not None:  # the last moment not to start it
            return StageOutcome(stage.name, "not run", reason=stop)
        try:
            record = self.execute(stage, env_path, info, inputs)
        except NixreproError as exc:
            return StageOutcome(stage.name, "failed", reason=str(exc))
        outputs = {o.uri: o.version_id or "" for o in record.data.outputs if not o.pending}
        if record.status == "succeeded" and self.signals.stopping.is_set():
            # it may have cut its work short on the signal and still exited 0: never a cache hit
            return StageOutcome(stage.name, "interrupted", record.id,
                                f"run {record.short_id} exited 0 after {self.signals.signal_name}; "
                                "not cached, so it runs again next time", outputs)
        if record.status != "succeeded":
            ended = f"run {record.short_id} {record.status}" + (
                f" with exit code {record.exit_code}" if record.exit_code else "")
            if record.status == "interrupted" or self.signals.stopping.is_set():
                # a command that traps the forwarded signal and exits non-zero was interrupted too
                signame = record.signal or self.signals.signal_name
                return StageOutcome(stage.name, "interrupted", record.id,
                                    ended + (f" ({signame})" if signame else ""))
            return StageOutcome(stage.name, "failed", record.id, ended)
        missing = [o.uri for o in stage.outputs if not outputs.get(o.uri)]
        if missing:
            return StageOutcome(stage.name, "failed", record.id,
                                f"it did not write its declared output {missing[0]}")
        self.remember(key, record)
        return StageOutcome(stage.name, "ran", record.id, "", outputs, key)

    def input_versions(self, stage: Stage, done: dict[str, StageOutcome]) -> dict[str, str]:
        """Exact version ids: an upstream stage's output as it produced it, else the latest."""
        versions: dict[str, str] = {}
        for uri in stage.inputs:
            producer = self.pipeline.producer.get(uri)
            if producer is not None and producer in done:
                versions[uri] = done[producer].outputs[uri]
            else:
                versions[uri] = self.resolver.latest_version(uri)
        return versions


def plan(runner: PipelineRunner, targets: Sequence[str] = ()) -> list[StageOutcome]:
    """What ``pipeline run`` would do now, without running anything (``skipped`` = up to date)."""
    names = runner.pipeline.closure_of(targets or runner.pipeline.stages)
    previous = _previous_stage_runs(runner.store)
    result: dict[str, StageOutcome] = {}
    for name in names:
        stage = runner.pipeline.stages[name]
        stale_ups = [up for up in sorted(runner.pipeline.upstream[name])
                     if up in result and result[up].state != "skipped"]
        if stale_ups:
            result[name] = StageOutcome(name, "not run", reason=f"would run after {stale_ups[0]}")
            continue
        try:
            inputs = runner.input_versions(stage, result)
            parts = runner.key_parts(stage, runner.env_path(stage), inputs, result)
        except NixreproError as exc:
            result[name] = StageOutcome(name, "failed", reason=str(exc))
            continue
        cached = None if runner.force else runner.cached_run(cache_key(parts), stage)
        if cached is not None:
            result[name] = StageOutcome(name, "skipped", cached.id, "up to date",
                                        {o.uri: o.version_id or "" for o in cached.data.outputs},
                                        cache_key(parts))
        else:
            reason = stale_reason(previous.get(name), parts)
            result[name] = StageOutcome(name, "not run", reason=f"would run: {reason}")
    return [result[name] for name in names]


def _previous_stage_runs(store: RunStore) -> dict[str, StageInfo]:
    latest: dict[str, StageInfo] = {}
    for _, _, stage in reversed(store.values("stage")):  # oldest first, so the newest wins
        if stage is not None:
            latest[stage.name] = stage
    return latest


def last_outcomes(store: RunStore) -> list[dict[str, Any]]:
    try:
        data: list[dict[str, Any]] = json.loads((store.root / LAST_FILE).read_text())
        return data
    except FileNotFoundError:
        return []


def for_project(cwd: Path, nix: Nix, *, dev: bool = False, force: bool = False,
                stage_stdout: BinaryIO | None = None) -> PipelineRunner:
    """The pipeline of the project at ``cwd``, each stage run as ``nixrepro run`` would run it:
    its inputs at exactly the versions in its cache key (``--input URI@VERSION``), its outputs
    stored when it ends (``--output LOCAL=URI``), with the project's trackers. ``stage_stdout``:
    where the stages' output goes instead of this process's stdout (``--json`` keeps stdout for
    the JSON)."""
    from .. import config as config_module

    repo = GitRepo.discover(cwd)
    config = config_module.load(repo.root)

    def execute(stage: Stage, env_path: str, info: StageInfo, inputs: dict[str, str]) -> RunRecord:
        # imported by the first stage that runs: pipeline status runs none and skips them
        from ..git import STORE_DIR
        from ..runner import RunRequest, prepare
        from ..runner import execute as execute_run
        from ..trackers import from_config

        # the trackers are made before the preflight, so that their imports overlap it
        trackers = from_config(config, repo.root, repo.root / STORE_DIR)
        request = RunRequest(
            argv=stage.argv, cwd=repo.root, env_path=env_path, params=stage.params, dev=dev,
            name=stage.name, tags=[f"stage:{stage.name}"], data_pins=inputs, stage=info,
            inputs=[f"{uri}@{version}" for uri, version in inputs.items()],
            outputs=[f"{out.local}={out.uri}" for out in stage.outputs],
        )
        # the signals the pipeline forwarded while the stage ran: its record says interrupted,
        # as `nixrepro run`'s would, even if the command trapped the signal and exited
        return execute_run(prepare(request, config, nix), stdout=stage_stdout, observers=trackers,
                           signals=runner.signals.received)

    runner = PipelineRunner(repo, config, Pipeline.from_config(config), nix=nix,
                            resolver=LatestVersion(config.data), execute=execute, dev=dev,
                            force=force)
    return runner


class LatestVersion:
    """The pipeline's resolver: an external input's latest version, asked of its store (opened by
    the first input that is no stage's output: a pipeline without one never imports the stores)."""

    def __init__(self, settings: DataConfig) -> None:
        self.settings = settings
        self._data: Data | None = None
        self._opening = threading.Lock()  # stages run from several threads with -j

    def latest_version(self, uri: str) -> str:
        from ..datastore import DataURI
        from ..datastore.ops import Data

        with self._opening:
            if self._data is None:
                self._data = Data(self.settings)
        return self._data.resolve(DataURI.parse(uri)).version_id


def status(runner: PipelineRunner) -> list[dict[str, Any]]:
    """``pipeline status``: each stage's outcome in the last ``pipeline run`` and what a run would
    do now (``{"stage", "last", "now"}``)."""
    last = {o["stage"]: o for o in last_outcomes(runner.store)}
    return [{"stage": o.name, "last": last.get(o.name), "now": o.to_dict()} for o in plan(runner)]


def stale_reason(previous: StageInfo | None, parts: dict[str, Any]) -> str:
    """In words, which part of the key changed since the stage last ran."""
    if previous is None:
        return "it never ran"
    names = {"closure_hash": "environment", "code": "code", "params": "params", "inputs": "input data",
             "cmd": "command", "upstream": "an upstream stage", "dev_diff": "uncommitted changes",
             "outputs": "outputs"}
    changed = [names[k] for k in names if previous.key_parts.get(k) != parts.get(k)]
    return ("changed: " + ", ".join(changed)) if changed else "its cached run is gone"
