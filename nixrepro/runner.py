"""``nixrepro run``: refuse what could not be reproduced, then run and record.

Two phases. :func:`prepare` checks everything and gathers the run's identity (git state, flake.lock,
environment closure, host facts) and records nothing: a refusal leaves no trace. :func:`execute`
creates the run, writes the record (status ``running``), runs the command under supervision and
writes the final record, whatever happens in between.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import __version__, codec, cuda, datalog, determinism, facts, host, rundir
from .closure import Closure, cached_closure
from .codec import frozen
from .config import Config, DataConfig
from .data import SETTINGS_VARIABLE
from .errors import NixreproError, RefusedError, UsageError
from .git import GitRepo, format_dirty
from .host import HostInfo
from .lock import FlakeLock
from .nix import Nix
from .parallel import Background
from .projectflake import checked_lock, project_flake_dir, unpinned_input_warnings
from .record import (
    BuildFacts,
    CodeState,
    Command,
    CudaInfo,
    Environment,
    Recorder,
    RunRecord,
    Scalar,
    StageInfo,
)
from .redact import Redactor
from .runstore import GC_ROOT, RunStore
from .supervise import Interrupted, Outcome, StopSignals, supervise
from .trackers import MetricsTail, Observers, RunObserver

if TYPE_CHECKING:
    from .datastore.ops import Fetched


@frozen
class RunRequest:
    """What the user asked for: the command-line of ``nixrepro run`` as data."""

    argv: list[str]
    cwd: Path
    env_path: str | None = None
    flake: str | None = None
    dev: bool = False
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    parent: str | None = None
    params: dict[str, Scalar] = field(default_factory=dict)
    seed: int | None = None
    verify_contents: bool = False
    data_pins: dict[str, str] = field(default_factory=dict)  # uri -> version id (reproduce)
    deterministic: bool = False
    group: str | None = None  # set by repeats.run_repeated
    repeat_index: int | None = None
    stage: StageInfo | None = None  # set when the run is a pipeline stage
    facts: Path | None = None  # the build facts of lib.mkExperiment (`nix run .#experiment`)
    inputs: list[str] = field(default_factory=list)  # URI[@VERSION], fetched before the command
    outputs: list[str] = field(default_factory=list)  # LOCAL=URI, stored after it

    @property
    def effective_seed(self) -> int | None:
        """``--deterministic`` without ``--seed`` runs with seed 0 (recorded)."""
        return 0 if self.seed is None and self.deterministic else self.seed


@frozen
class Prepared:
    """Everything known before the command starts; nothing has been written yet."""

    request: RunRequest
    repo: GitRepo
    store: RunStore
    code: CodeState
    dev_patch: bytes | None
    environment: Environment
    host: HostInfo
    parent: str | None
    redactor: Redactor
    nix: Nix
    data: DataConfig = field(default_factory=DataConfig)
    facts: BuildFacts | None = None
    cuda: CudaInfo | None = None
    warnings: list[str] = field(default_factory=list)  # printed when the run starts


def parse_param(text: str) -> tuple[str, Scalar]:
    """``lr=0.1`` -> ("lr", 0.1). Values are typed: int, float, true/false, else string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"param {text!r} is not key=value; write it as -p lr=0.1.")
    return key.strip(), _typed(raw)


# A number is what JSON calls one (a leading + and a bare ".5" or "5." allowed): 007 (an id?),
# 1_000 and " 5", which Python's int() and float() also accept, stay the text that was written.
_INT = re.compile(r"[+-]?(0|[1-9]\d*)")
_FLOAT = re.compile(r"[+-]?((0|[1-9]\d*)(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _typed(raw: str) -> Scalar:
    """true/false (any case), an int, a finite float, else the string itself: nan, inf and 1e999
    stay strings, because JSON, and so the record, has no such numbers."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if _INT.fullmatch(raw) and len(raw) <= 300:  # int() refuses 4,301+ digits; such an id is text
        return int(raw)
    if _FLOAT.fullmatch(raw) and math.isfinite(number := float(raw)):
        return number
    return raw


def prepare(request: RunRequest, config: Config, nix: Nix, *, repo: GitRepo | None = None) -> Prepared:
    """All refusals happen here, before anything is recorded.

    The git, nix and nvidia-smi calls are independent and overlap (see bench/run_overhead.py).
    ``repo``: the repository around ``request.cwd``, where the caller has found it already (the
    CLI, to read the config): git is not asked for it again.
    """
    if not request.argv:
        raise UsageError("no command given; put it after --, e.g. nixrepro run -- python train.py.")
    if request.env_path and request.flake:
        raise UsageError("give either --env or --flake, not both.")
    seed = request.effective_seed
    if seed is not None and not 0 <= seed <= 2**32 - 1:  # every Python child would die at start-up
        raise UsageError(f"seed {seed} is outside 0..4294967295, the range PYTHONHASHSEED takes; "
                         "give a --seed from 0 to 4294967295.")
    if request.inputs or request.outputs:  # the data stores' registry is imported by these runs only
        from .datastore import flags

        flags.check_flags(request.inputs, request.outputs)
    repo = repo or GitRepo.discover(request.cwd)
    store = RunStore.for_repo(repo.root)
    # the three git calls start together: the slowest one, not a chain, is what the run waits for
    flake_dir = project_flake_dir(repo, request, config)
    lock_rel = repo.relative(flake_dir / "flake.lock") if flake_dir else None
    tracked = Background(repo.is_tracked, lock_rel) if lock_rel else None
    snapshot = Background(repo.snapshot)
    remote = Background(repo.remote_url)
    version = Background(nix.version)  # a cached answer (nix.py): ready at once but the first time
    host_info = Background(host.collect)
    env_path = _normal_store_path(request.env_path) if request.env_path else ""
    # nix 2.33+ wants --json-format, chosen from the version (cached: no wait but the first time)
    closure = Background(_closure, nix, env_path, version) if env_path else None

    head = snapshot.result().commit
    dirty = snapshot.result().changes
    facts_file = facts.read(request.facts) if request.facts is not None else None
    build_facts = facts_file.facts if facts_file else None
    origin: facts.Origin = "checkout"
    if build_facts is not None and build_facts.rev not in (None, head):
        origin = facts.origin(build_facts, head=head, has_commit=repo.has_commits(build_facts.rev))
    lock: FlakeLock | None
    if facts_file is not None and origin == "flake":
        # a flake run by reference: its code and lock are the build's, the cwd's checkout is not
        facts.check_env(facts_file.facts, env_path)
        if facts_file.lock is None and facts_file.facts.flake_lock_sha256 is not None:
            raise RefusedError(  # a record with fewer inputs than the build had would lie
                "the build facts name a flake.lock but do not carry it (an older lib.mkExperiment), "
                "so the inputs of this flake run by reference cannot be recorded; update the "
                "flake's nixrepro input (`nix flake lock --update-input nixrepro`) and run again."
            )
        lock, lock_rel, dirty = facts_file.lock, None, []
    else:
        if build_facts is not None and any(e.path == lock_rel and e.code == " A" for e in dirty):
            raise facts.lock_written_by_nix()  # `nix run` locked a flake that had no flake.lock
        if dirty and not request.dev:
            raise RefusedError(
                f"the work tree has uncommitted changes ({format_dirty(dirty)}); commit them, or "
                "pass --dev to record a development run with the diff."
            )
        lock = checked_lock(
            flake_dir, lock_rel, request.dev, tracked.result() if tracked else False,
            {e.path for e in dirty},
        )
    inputs = lock.inputs if lock else {}
    if build_facts is not None:  # an overridden input first: it is also why nix drops the rev
        inputs = facts.evaluated_inputs(build_facts, inputs, dev=request.dev)
        if origin == "checkout":
            facts.check(build_facts, head=head, env_path=env_path, dev=request.dev,
                        flake_lock=flake_dir / "flake.lock" if flake_dir and lock else None)
    warnings = unpinned_input_warnings(inputs)
    parent = store.resolve(request.parent).id if request.parent else None
    if closure is None:  # build the flake output, then ask for its closure
        env_path = _build_env(request, config, nix)
        closure = Background(_closure, nix, env_path, version)
    cuda_info = cuda.collect(closure.result().paths, host_info.result(), os.environ)
    warnings += cuda.check(cuda_info, host_info.result(), build_facts)
    patch = repo.diff_with_untracked() if request.dev and dirty else None
    if request.verify_contents or config.run.verify_contents:
        corrupted = nix.verify_contents([info.path for info in closure.result().paths])
        if corrupted:
            raise RefusedError(
                f"the environment's closure is corrupted ({', '.join(corrupted[:3])} no longer "
                "matches its recorded hash); repair it with `nix store repair` and run again."
            )
    environment = Environment(
        flake_lock_sha256=lock.sha256 if lock else None,
        inputs=inputs,
        env_path=env_path,
        system=nix_system(),
        nix_version=version.result(),
        closure_hash=closure.result().hash,
        closure=closure.result().store_paths(),
        flake_ref=request.flake or (None if request.env_path else config.run.flake),
        flake_lock_path=lock_rel if lock else None,
        contents_verified=request.verify_contents or config.run.verify_contents,
    )
    if origin == "flake" and build_facts is not None and build_facts.rev is not None:
        code = CodeState(commit=build_facts.rev, branch=None, remote=None, dirty=False,
                         origin="flake")
    else:
        code = CodeState(
            commit=head,
            branch=snapshot.result().branch,
            remote=remote.result(),
            dirty=bool(dirty),
            diff_sha256=hashlib.sha256(patch).hexdigest() if patch is not None else None,
            dirty_files=[str(entry) for entry in dirty],
        )
    return Prepared(
        request=request,
        repo=repo,
        store=store,
        code=code,
        dev_patch=patch,
        environment=environment,
        host=host_info.result(),
        parent=parent,
        redactor=Redactor.from_env(os.environ, config.secrets.extra_names, argv=request.argv,
                                   params=request.params),
        nix=nix,
        data=config.data,
        facts=build_facts,
        cuda=cuda_info,
        warnings=warnings,
    )


def _closure(nix: Nix, env_path: str, version: Background[str]) -> Closure:
    """The environment's closure: kept from an earlier run of the same store path (its closure
    never changes, nixrepro.closure), else asked of ``nix path-info``."""
    nix_version = version.result()
    return cached_closure(env_path, nix_version, lambda: nix.closure(env_path, nix_version))


def _normal_store_path(path: str) -> str:
    """A ./result link or a path with a trailing slash, as the store path it names."""
    return os.path.realpath(path) if os.path.islink(path) else path.rstrip("/")


def _build_env(request: RunRequest, config: Config, nix: Nix) -> str:
    ref = request.flake or config.run.flake
    if ref is None:
        raise UsageError(
            "no environment given; pass --env STOREPATH or --flake REF (e.g. --flake .#env), "
            "or set [run] flake in nixrepro.toml."
        )
    return nix.build(ref, cwd=request.cwd)


def nix_system() -> str:
    """Nix's name for this platform (x86_64-linux...), without asking nix."""
    uname = os.uname()
    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(uname.machine.lower(), uname.machine.lower())
    return f"{machine}-{uname.sysname.lower()}"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


def child_environment(prepared: Prepared, run_id: str, run_dir: Path) -> dict[str, str]:
    """What the command sees: the env's bin first on PATH, and the run's identity."""
    request = prepared.request
    env = dict(os.environ)
    env["PATH"] = f"{prepared.environment.env_path}/bin" + (
        os.pathsep + env["PATH"] if env.get("PATH") else ""
    )
    env["NIXREPRO_RUN_ID"] = run_id
    env["NIXREPRO_RUN_DIR"] = str(run_dir)
    env["NIXREPRO_PARAMS"] = json.dumps(request.params, sort_keys=True)
    env.setdefault("PYTHONUNBUFFERED", "1")  # logs stream live and survive a crash
    seed = request.effective_seed
    if seed is not None:
        env["NIXREPRO_SEED"] = str(seed)
        env["PYTHONHASHSEED"] = str(seed)
    if request.deterministic and seed is not None:
        env.update(determinism.deterministic_env(seed, env))
    if request.data_pins:
        env[datalog.PINS_VARIABLE] = json.dumps(request.data_pins, sort_keys=True)
    env[SETTINGS_VARIABLE] = json.dumps(codec.encode(prepared.data), sort_keys=True)
    return env


def execute(
    prepared: Prepared,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    observers: Sequence[RunObserver] = (),
    signals: list[int] | None = None,
) -> RunRecord:
    """Create the run, run the command, and record it; the record is complete however it ends.

    ``observers`` (trackers such as W&B) see the start, every metric and the end; one that fails
    is dropped with a warning and never fails the run. ``signals``: where a caller that holds
    the signal handlers (a pipeline running this from a worker thread) notes the signals it
    received; the run reads them as its own (it is not started after one, and is interrupted by
    one that comes while it runs).
    """
    request, store, redactor = prepared.request, prepared.store, prepared.redactor
    sinks = Observers(observers, lambda message: _warn(stderr, message), redactor.scrub)
    # Inputs come first: one that cannot be fetched refuses the run before anything is recorded.
    inputs: list[Fetched] = []
    if request.inputs:
        from .datastore import flags

        inputs = flags.fetch_inputs(request.inputs, prepared.data, request.data_pins)
    for warning in prepared.warnings:
        _warn(stderr, warning)
    run_id, run_dir = _new_run(store)
    # One lock for the whole run (a gap would let a reader call it crashed); signals from here on
    # are noted, and a run asked to stop before its command starts is recorded as interrupted.
    with _until_started(store, run_dir) as started, store.hold(run_id), StopSignals(signals) as stops:
        env = child_environment(prepared, run_id, run_dir)
        if inputs:
            from .datastore import flags

            flags.expose_inputs(inputs, run_dir, env)
        patch = redactor.scrub_bytes(prepared.dev_patch) if prepared.dev_patch is not None else None
        record = RunRecord(
            id=run_id,
            status="running",
            dev=request.dev,
            started_at=now(),
            command=Command(argv=redactor.argv(request.argv), cwd=str(request.cwd)),
            # the patch's hash is of the bytes written, so that a scrubbed patch still verifies
            code=prepared.code if patch is None else dataclasses.replace(
                prepared.code, diff_sha256=hashlib.sha256(patch).hexdigest()),
            environment=prepared.environment,
            host=prepared.host,
            recorder=Recorder(version=__version__, pid=os.getpid(), hostname=os.uname().nodename),
            parent=prepared.parent,
            name=redactor.scrub(request.name) if request.name is not None else None,
            tags=[redactor.scrub(tag) for tag in request.tags],
            params=redactor.params(request.params),
            seed=request.effective_seed,
            env_vars=redactor.env(env),
            deterministic=request.deterministic,
            group=request.group,
            repeat_index=request.repeat_index,
            stage=request.stage,
            facts=prepared.facts,
            cuda=prepared.cuda,
        )
        if patch is not None:
            (run_dir / rundir.DEV_PATCH).write_bytes(patch)
        if request.outputs:
            from .datastore import flags

            flags.declare_outputs(request.outputs, run_dir)
        store.save(record)
        rundir.reserve(run_dir, record)
        started()
        record = _run_and_record(prepared, record, env, run_dir, sinks, stops, stdout, stderr)
    # asked to stop before the command or while its outputs were stored: Ctrl-C's exit, where this
    # run holds the handlers (a pipeline stage's caller, which holds them, stops for itself)
    if stops.received and stops.installed:
        raise Interrupted(stops.received[0])
    return record


def _new_run(store: RunStore) -> tuple[str, Path]:
    try:
        return store.new_run_dir()
    except OSError as exc:
        raise _store_error(store, exc) from None


def _store_error(store: RunStore, exc: OSError) -> NixreproError:
    return RefusedError(
        f"cannot write the run store {store.root} ({exc.strerror or exc}); make it writable "
        "(or free space on its disk) and run again."
    )


@contextlib.contextmanager
def _until_started(store: RunStore, run_dir: Path) -> Iterator[Callable[[], None]]:
    """Until ``started()`` is called (the first record is written), a failure removes the run:
    a run that never started leaves nothing half-written behind."""
    state = {"started": False}

    def started() -> None:
        state["started"] = True

    try:
        yield started
    except BaseException as exc:
        if state["started"]:
            raise
        import shutil  # here: its import pulls in bz2 and lzma, on every run's start

        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _store_error(store, exc) from None
        raise


def _run_and_record(
    prepared: Prepared, record: RunRecord, env: dict[str, str], run_dir: Path, sinks: Observers,
    stops: StopSignals, stdout: BinaryIO | None, stderr: BinaryIO | None,
) -> RunRecord:
    """Run the command and write the final record, whatever happens in between.

    A signal before the command starts keeps it from starting; one while outputs are stored stops
    that upload (nixrepro.datastore.flags). Nothing stops the final record from being written.
    """
    request, store = prepared.request, prepared.store
    outcome: Outcome | None = None
    status = "failed"  # if nixrepro itself fails between start and end

    def warn(message: str) -> None:
        _warn(stderr, message)

    try:
        pin = Background(_pin, prepared, run_dir, stderr)  # overlaps with the command
        if sinks:
            record = _with_trackers(record, sinks.started(record, run_dir))
            store.save(record)
        if not stops.received:
            with MetricsTail(run_dir, sinks):
                outcome = _start(prepared, env, run_dir, stdout, stderr, stops.received)
        pin.result()
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        rundir.release(run_dir)  # the room kept for the final record (a full disk)
        if outcome is not None and outcome.reason:
            warn(outcome.reason)
        if request.outputs:  # kept even if the command failed: nothing produced is lost
            from .datastore import flags

            flags.store_outputs(request.outputs, request.cwd, prepared.data, run_dir, warn, stops)
        record = _finish(record, outcome, run_dir, status, stops.first)
        try:
            store.save(record)
        except OSError as exc:
            raise RefusedError(
                f"the final record of run {record.id} could not be written ({exc.strerror or exc}); "
                "the run will read as crashed, with its logs, metrics and data; free space in "
                f"{store.root} so that later runs are recorded."
            ) from None
        if sinks:
            # a signal while the trackers finish their runs stops them (a warning each), and the
            # run ends as asked: execute raises Interrupted for it
            with contextlib.suppress(Interrupted):
                ended = stops.interruptible(lambda: sinks.ended(record, run_dir))
                record = _with_trackers(record, ended)
            with contextlib.suppress(OSError):  # the outcome is saved; only tracker ids would wait
                store.save(record)
    return record


def _with_trackers(record: RunRecord, info: dict[str, dict[str, Any]]) -> RunRecord:
    if not info:
        return record
    merged = {name: {**record.trackers.get(name, {}), **values} for name, values in info.items()}
    return record.replace(trackers={**record.trackers, **merged})


def _pin(prepared: Prepared, run_dir: Path, stderr: BinaryIO | None) -> None:
    """Make the env a GC root; a failure is a warning (the run is still fully recorded)."""
    try:
        prepared.nix.add_gc_root(prepared.environment.env_path, run_dir / GC_ROOT)
    except NixreproError as exc:
        _warn(stderr, f"could not pin the environment against garbage collection: {exc}")


def _start(
    prepared: Prepared, env: dict[str, str], run_dir: Path,
    stdout: BinaryIO | None, stderr: BinaryIO | None, noted: list[int],
) -> Outcome:
    try:
        return supervise(
            prepared.request.argv,
            env=env,
            cwd=prepared.request.cwd,
            stdout_log=run_dir / rundir.STDOUT_LOG,
            stderr_log=run_dir / rundir.STDERR_LOG,
            redactor=prepared.redactor,
            stdout=stdout,
            stderr=stderr,
            noted=noted,
        )
    except OSError as exc:  # the command could not be started: recorded as a shell would say
        program = prepared.request.argv[0]
        shown = program if len(program) <= 200 else program[:200] + "..."
        reason = {FileNotFoundError: "not found", PermissionError: "not executable"}.get(
            type(exc), f"cannot be started ({exc.strerror or exc})")
        message = f"nixrepro: {shown}: command {reason} (PATH starts with the env's bin)\n"
        with open(run_dir / rundir.STDERR_LOG, "ab") as log:
            log.write(message.encode(errors="backslashreplace"))
        _warn(stderr, message.strip().removeprefix("nixrepro: "))
        return Outcome(exit_code=127 if reason == "not found" else 126, signal=None,
                       duration_s=0.0, received=None)


def _finish(
    record: RunRecord, outcome: Outcome | None, run_dir: Path, status: str, stopped: str | None
) -> RunRecord:
    """The final record: how the command ended, and the run directory's one fold (rundir)."""
    started = dt.datetime.fromisoformat(record.started_at)
    ended = dt.datetime.now(dt.timezone.utc)
    final = outcome.status if outcome else status
    if stopped is not None and (outcome is None or final != "failed"):
        final = "interrupted"  # asked to stop before the command, or while storing its outputs
    return rundir.fold(record, run_dir).replace(
        status=final,
        ended_at=ended.isoformat(timespec="microseconds"),
        exit_code=outcome.exit_code if outcome else None,
        signal=outcome.signal if outcome else None,
        duration_s=outcome.duration_s if outcome else round((ended - started).total_seconds(), 6),
    )


def _warn(stream: BinaryIO | None, message: str) -> None:
    target = stream if stream is not None else sys.stderr.buffer
    target.write(f"nixrepro: warning: {message}\n".encode())
    target.flush()


def run(
    request: RunRequest,
    config: Config | None = None,
    nix: Nix | None = None,
    observers: Sequence[RunObserver] = (),
    *,
    repo: GitRepo | None = None,
) -> RunRecord:
    """Check, run and record ``request``; the library entry point behind ``nixrepro run``.
    ``repo``: the repository around ``request.cwd``, if the caller has found it (see prepare)."""
    from . import config as config_module

    nix = nix or Nix()
    if config is None:
        repo = repo or GitRepo.discover(request.cwd)
        config = config_module.load(repo.root)
    return execute(prepare(request, config, nix, repo=repo), observers=observers)
