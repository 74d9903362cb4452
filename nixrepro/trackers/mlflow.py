"""MLflow as the team dashboard: ``[trackers.mlflow]`` makes every recorded run an MLflow run.

:class:`MlflowSink` is a run observer (nixrepro.trackers). ``mlflow`` is imported only when the
table is configured, in a thread started when the sink is made, so its ~1.5 s import overlaps
nixrepro's preflight and the experiment; a run without ``[trackers.mlflow]`` never imports it.
It talks to the tracking store through ``MlflowClient`` only (no fluent API, no active run, no
process-wide tracking URI), so nothing of it reaches the experiment's own environment.

What the MLflow run gets: the params; the provenance as ``nixrepro.*`` tags (closure hash,
flake.lock hash, commit, dirty flag, nixpkgs rev, data versions, GPU and driver, the nixrepro run
id: nixrepro.trackers.provenance, the same facts W&B gets) and MLflow's own source tags (git
commit, branch, remote, user); each metric with its step, sent in batches (``log_batch``) as
metrics.jsonl grows; at the end the record, the logs, the metrics and data files as artifacts
and the run's status (succeeded: FINISHED, interrupted: KILLED, failed or crashed: FAILED).

A failure (a tracking URI MLflow cannot open, a server that does not answer, an MLflow exception
at any point) is one warning: the sink raises :class:`TrackerError` and the observer machinery
drops it for the rest of the run; the experiment and the local record go on untouched.
Documented in docs/trackers.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..errors import TrackerError
from ..metrics import MetricPoint
from ..parallel import Background
from . import TrackerContext, attached_files, describe, reachable
from .provenance import flat
from .worker import WorkerSink

if TYPE_CHECKING:  # the sink's module stays light: made before the run path is imported
    from ..record import RunRecord

MLFLOW_HOME = "mlflow"  # .nixrepro/mlflow: the default store (mlflow.db) and its artifacts
STATUS = {"succeeded": "FINISHED", "interrupted": "KILLED", "failed": "FAILED", "crashed": "FAILED"}
KEY_MAX = 250  # MLflow's limits (mlflow.utils.validation)
PARAM_MAX = 6000
TAG_MAX = 8000
STEP_MAX = 2**63 - 1
TIME_MAX = STEP_MAX / 1000  # seconds: a metric's timestamp is a long of milliseconds
_NAME = re.compile(r"^[/\w.\- :]*$")  # the characters MLflow takes in a metric or param name
_CLIENT_LOCK = threading.Lock()  # sinks in one process: one store (and schema) made at a time


@dataclass(frozen=True)
class Settings:
    """``[trackers.mlflow]``."""

    # default: MLFLOW_TRACKING_URI, else sqlite:///.nixrepro/mlflow/mlflow.db; a relative path
    # (sqlite:///mlruns.db, ./mlruns) is relative to the repository root
    tracking_uri: str | None = None
    experiment: str | None = None  # default: MLFLOW_EXPERIMENT_NAME, else the repository's name
    # where an experiment that nixrepro creates keeps artifacts; default: the server's choice, or
    # .nixrepro/mlflow/artifacts for a local store (never the work tree)
    artifact_location: str | None = None

    def check(self) -> tuple[str, str] | None:
        for key in ("tracking_uri", "experiment", "artifact_location"):
            value = getattr(self, key)
            if value is not None and not value.strip():
                return key, "is empty; give a value or leave the key out"
        return None


def make(settings: Settings, context: TrackerContext) -> MlflowSink:
    """The MLflow sink of one run."""
    return MlflowSink(settings, context)


def resolve_tracking_uri(settings: Settings, repo_root: Path, store_root: Path,
                         environ: Mapping[str, str]) -> str:
    """The store to use: ``tracking_uri``, else MLFLOW_TRACKING_URI, else the run store's own
    sqlite database; a relative local path is made absolute against the repository root, so a
    run started in a subdirectory uses the same store."""
    uri = (settings.tracking_uri or environ.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return f"sqlite:///{store_root / MLFLOW_HOME / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path and not path.startswith("/") and not path.startswith(":memory:"):
            return f"sqlite:///{repo_root / path}"
        return uri
    if uri.startswith("file:") and not uri.startswith("file:/"):  # file:mlruns, relative
        return (repo_root / uri.removeprefix("file:")).as_uri()
    if _scheme(uri) == "" and uri not in NAMED_STORES:  # a plain path: MLflow's file store
        return uri if uri.startswith("/") else str(repo_root / uri)
    return uri


NAMED_STORES = ("databricks", "databricks-uc", "uc")  # tracking URIs that are a bare name


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition(":")
    return head.lower() if sep and "/" not in head else ""


def is_local(uri: str) -> bool:
    """A store on this machine's file system (sqlite, a file store path)."""
    return _scheme(uri) in ("sqlite", "file") or (_scheme(uri) == "" and uri not in NAMED_STORES)


def valid_name(name: str) -> bool:
    """What MLflow accepts as a metric or param name (mlflow.utils.validation)."""
    if not name or len(name) > KEY_MAX or not _NAME.match(name):
        return False
    norm = posixpath.normpath(name)
    return not (norm != name or norm == "." or norm.startswith("..") or norm.startswith("/"))


def metric_value(value: Any) -> float | None:
    """A metric as MLflow's double, or None for what is no number (a string, a null)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an integer beyond a double
            return math.inf if value > 0 else -math.inf
    if value in ("nan", "inf", "-inf"):  # how metrics.jsonl keeps them (nixrepro.metrics)
        return float(value)
    return None


def _millis(iso: str | None) -> int | None:
    if not iso:
        return None
    import datetime as dt

    return int(dt.datetime.fromisoformat(iso).timestamp() * 1000)


@contextlib.contextmanager
def _no_url_line() -> Iterator[None]:
    """Without MLflow's "View run ... at: URL" line on stdout, which is the experiment's (the URL
    is in the record). Its own switch, set for this one call as W&B's variables are (wandb.py)."""
    name = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    saved = os.environ.get(name)
    os.environ[name] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _import_mlflow() -> Any:
    import logging

    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError as exc:  # not a dependency of nixrepro: installed beside it when wanted
        raise TrackerError(f"mlflow cannot be imported where nixrepro runs ({exc}); install "
                           "MLflow 2.8 or later beside nixrepro (pip install mlflow-skinny)") from exc

    # its INFO lines (creating the tables of a new store) are not the experiment's output
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)

    return SimpleNamespace(MlflowClient=MlflowClient, Metric=Metric, Param=Param, RunTag=RunTag)


class MlflowSink(WorkerSink):
    """One MLflow run for one nixrepro run (make a new sink per run)."""

    name = "mlflow"
    shown = "MLflow"

    def __init__(self, settings: Settings, context: TrackerContext,
                 importer: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self._settings = settings
        self._context = context
        self._uri = resolve_tracking_uri(settings, context.repo_root, context.store_root,
                                         context.environ)
        self._experiment = (settings.experiment or context.environ.get("MLFLOW_EXPERIMENT_NAME")
                            or context.repo_root.name)
        self._api = Background(importer or _import_mlflow)  # starts now: overlaps the preflight
        self._client: Any = None
        self._run_id: str | None = None
        self._experiment_id: str | None = None
        self._artifact_uri: str | None = None
        self._tags_sent: dict[str, str] = {}
        self._last_step: int | None = None
        self._skipped: set[str] = set()

    @property
    def tracking_uri(self) -> str:
        return self._uri

    # --- RunObserver (started and logged: WorkerSink's) -----------------------------------------

    def ended(self, record: RunRecord, run_dir: Path) -> dict[str, Any] | None:
        self._all_sent()
        api, client, run_id = self._api.result(), self._client, self._run_id
        try:
            final = {**self._changed_tags(record), **self._outcome_tags(record)}
            if final:
                client.log_batch(run_id, tags=[api.RunTag(k, v) for k, v in final.items()],
                                 synchronous=True)
            for path in attached_files(run_dir):
                client.log_artifact(run_id, str(path))
            with _no_url_line():
                client.set_terminated(run_id, status=STATUS.get(record.status, "FAILED"),
                                      end_time=_millis(record.ended_at))
        except Exception as exc:
            self._fail("MLflow failed at the end of the run", exc)
            raise TrackerError(self._error or describe(exc)) from exc
        return self._info()

    def abandoned(self) -> None:
        """nixrepro went away before the run's end (killed, or it dropped this tracker): what
        was logged is sent, and the MLflow run ends as FAILED instead of staying RUNNING."""
        self._send_the_rest()
        if self._run_id is not None and self._client is not None and self._error is None:
            with _no_url_line():
                self._client.set_terminated(self._run_id, status="FAILED")

    # --- on the worker thread (nixrepro.trackers.worker): the run, then each batch of points ----

    def _start(self, record: RunRecord) -> None:
        api = self._api.result()
        if _scheme(self._uri) in ("http", "https") and not reachable(self._uri):
            raise TrackerError(f"the tracking server {self._shown_uri()} does not answer")
        with _CLIENT_LOCK, self._store_lock():
            self._prepare_local_store()
            self._client = api.MlflowClient(tracking_uri=self._uri)
            self._experiment_id = self._experiment_id_of(self._client)
        run = self._client.create_run(self._experiment_id, start_time=_millis(record.started_at),
                                      tags=self._source_tags(record), run_name=record.name)
        self._run_id = run.info.run_id
        self._artifact_uri = run.info.artifact_uri
        self._tags_sent = flat(record, TAG_MAX, self._context.remote)
        self._client.log_batch(
            self._run_id, params=self._params(api, record),
            tags=[api.RunTag(key, value) for key, value in self._tags_sent.items()],
            synchronous=True)

    def _send(self, points: list[MetricPoint]) -> None:
        """Whatever was waiting goes in one log_batch."""
        api = self._api.result()
        metrics = [m for point in points for m in self._metrics(api, point)]
        if metrics:
            self._client.log_batch(self._run_id, metrics=metrics, synchronous=True)

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Across processes (pipeline stages at once, each tracker in its own process): one
        makes a new local store's tables and the experiment while the others wait."""
        if not is_local(self._uri):
            yield
            return
        import fcntl

        home = self._context.store_root / MLFLOW_HOME
        home.mkdir(parents=True, exist_ok=True)
        with open(home / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _prepare_local_store(self) -> None:
        """The default store's directory (sqlite creates a file, not the directories above it)."""
        default = self._context.store_root / MLFLOW_HOME
        if self._uri == f"sqlite:///{default / 'mlflow.db'}":
            default.mkdir(parents=True, exist_ok=True)

    def _experiment_id_of(self, client: Any) -> str:
        """The experiment's id; created (artifacts outside the work tree) if it does not exist."""
        found = client.get_experiment_by_name(self._experiment)
        if found is not None:
            experiment_id: str = found.experiment_id
            return experiment_id
        location = self._settings.artifact_location
        if location is None and is_local(self._uri):
            location = (self._context.store_root / MLFLOW_HOME / "artifacts").as_uri()
        try:
            experiment_id = client.create_experiment(self._experiment, artifact_location=location)
        except Exception:  # made meanwhile by another process: use that one
            found = client.get_experiment_by_name(self._experiment)
            if found is None:
                raise
            experiment_id = found.experiment_id
        return experiment_id

    def _source_tags(self, record: RunRecord) -> dict[str, str]:
        """MLflow's own tags, which its UI shows as the run's source, commit and user."""
        code, argv = record.code, record.command.argv
        tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": argv[0] if argv else "",
                "mlflow.source.git.commit": code.commit, "mlflow.note.content": " ".join(argv)}
        if code.branch:
            tags["mlflow.source.git.branch"] = code.branch
        if code.remote:
            tags["mlflow.source.git.repoURL"] = code.remote
        if record.host.user:
            tags["mlflow.user"] = record.host.user
        return {key: value[:TAG_MAX] for key, value in tags.items()}

    def _params(self, api: Any, record: RunRecord) -> list[Any]:
        params = []
        for key, value in record.params.items():
            if not valid_name(key):
                self._skip(key, "param")
                continue
            text = "true" if value is True else "false" if value is False else str(value)
            params.append(api.Param(key, text[:PARAM_MAX]))
        return params

    def _metrics(self, api: Any, point: MetricPoint) -> list[Any]:
        """One point's metrics; a point without a step (or with one MLflow cannot keep) takes the
        step after the last one, as W&B numbers them."""
        step = point.step
        if not isinstance(step, int) or isinstance(step, bool) or not -STEP_MAX <= step <= STEP_MAX:
            step = 0 if self._last_step is None else min(self._last_step + 1, STEP_MAX)
        self._last_step = step
        when = point.time
        if not isinstance(when, (int, float)) or not 0 < when < TIME_MAX:
            when = time.time()  # MLflow keeps a timestamp of 0 to 2^63-1 ms; a writer's -1 or 1e300
        stamp = int(when * 1000)
        metrics = []
        for key, raw in point.metrics.items():
            value = metric_value(raw)
            if value is None:
                continue  # MLflow keeps numbers; the local record keeps the value
            if not valid_name(key):
                self._skip(key, "metric")
                continue
            metrics.append(api.Metric(key, value, stamp, step))
        return metrics

    def _skip(self, key: str, what: str) -> None:
        if key not in self._skipped:
            self._skipped.add(key)
            shown = key if len(key) <= 60 else key[:57] + "..."
            self._context.note(f"MLflow does not take the {what} name {shown!r} (letters, digits, "
                               "_ - . : / and spaces); the local record keeps it.")

    def _changed_tags(self, record: RunRecord) -> dict[str, str]:
        """The provenance tags that changed while it ran (its data outputs, say)."""
        now = flat(record, TAG_MAX, self._context.remote)
        return {key: value for key, value in now.items() if self._tags_sent.get(key) != value}

    def _outcome_tags(self, record: RunRecord) -> dict[str, str]:
        outcome = {"nixrepro.status": record.status, "nixrepro.exit_code": record.exit_code,
                   "nixrepro.signal": record.signal, "nixrepro.duration_s": record.duration_s}
        return {key: str(value) for key, value in outcome.items() if value is not None}

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"run_id": self._run_id, "experiment": self._experiment,
                                "experiment_id": self._experiment_id,
                                "tracking_uri": self._shown_uri()}
        if _scheme(self._uri) in ("http", "https"):
            info["url"] = (f"{self._shown_uri().rstrip('/')}/#/experiments/{self._experiment_id}"
                           f"/runs/{self._run_id}")
        elif self._artifact_uri and self._artifact_uri.startswith("file:"):
            # the run's artifacts directory, as W&B's offline run directory is kept
            from urllib.parse import unquote, urlparse

            path = Path(unquote(urlparse(self._artifact_uri).path))
            with contextlib.suppress(ValueError):
                path = path.relative_to(self._context.repo_root)
            info["dir"] = str(path)
        return info

    def _shown_uri(self) -> str:
        from ..redact import scrub_url

        return scrub_url(self._uri)

    def _fail(self, what: str, exc: BaseException) -> None:
        """Remember the failure (reported once by the observers); a local run is marked FAILED."""
        self._error = f"{what}: {describe(exc)}"
        if self._run_id is not None and self._client is not None and is_local(self._uri):
            with contextlib.suppress(Exception), _no_url_line():
                self._client.set_terminated(self._run_id, status="FAILED")
