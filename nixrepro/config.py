"""Configuration: ``nixrepro.toml`` at the git root, or ``[tool.nixrepro]`` in pyproject.toml.

Read once into frozen dataclasses and passed down explicitly. Unknown keys and wrong types are
errors that name the file and the key. Each section is a dataclass below; a new section is a new
dataclass and a field of :class:`Config`, and the loader validates it from its type hints with the
one codec (nixrepro.codec), which also reads the records.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import urllib.parse
from dataclasses import field
from pathlib import Path
from typing import Any, TypeVar

from . import codec
from .codec import frozen
from .errors import ConfigError, NixreproError

CONFIG_FILE = "nixrepro.toml"


@frozen
class RunConfig:
    """``[run]``: defaults for ``nixrepro run``."""

    flake: str | None = None  # used when neither --env nor --flake is given, e.g. ".#env"
    verify_contents: bool = False


@frozen
class SecretsConfig:
    """``[secrets]``: more environment variable names (substrings, any case) to redact."""

    extra_names: list[str] = field(default_factory=list)


@frozen
class ArchiveConfig:
    """``[archive]``: where ``nixrepro archive`` keeps closures, and the key that signs them."""

    to: str | None = None  # file:///dir or s3://bucket/prefix
    key_file: str | None = None  # secret signing key; default ~/.config/nixrepro/archive-key.sec
    endpoint_url: str | None = None  # S3-compatible service (SeaweedFS, MinIO); None: AWS
    # public keys ("name:base64") trusted besides the project key's: a team's keys, committed here,
    # check records and archives on every machine (nixrepro.archive.trusted_keys)
    trusted_keys: list[str] = field(default_factory=list)

    def secret_key_file(self) -> Path:
        """The signing key's file: ``key_file``, or ~/.config/nixrepro/archive-key.sec
        (XDG_CONFIG_HOME); where it is not, runs are recorded unsigned (nixrepro.archive)."""
        if self.key_file:
            return Path(self.key_file).expanduser()
        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "nixrepro" / "archive-key.sec"


# [trackers.<kind>]: the dashboards every recorded run also goes to (docs/trackers.md). Each table is
# read into its tracker module's Settings dataclass (nixrepro.trackers.TRACKERS); the older
# [tracker] kind = "wandb" table is read as [trackers.wandb].
LEGACY_TRACKER = "wandb"


@frozen
class DataConfig:
    """``[data]``: how to reach the data stores and where the local cache is (docs/data.md).

    Credentials never go here: they come from the standard AWS chain (environment, AWS_PROFILE,
    ~/.aws), so the config can be committed.
    """

    cache_dir: str | None = None  # default $XDG_CACHE_HOME/nixrepro/data
    endpoint_url: str | None = None  # an S3-compatible service; AWS_ENDPOINT_URL(_S3) also work
    region: str | None = None
    profile: str | None = None  # an AWS profile; AWS_PROFILE also works

    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "nixrepro" / "data"


@frozen
class RunsConfig:
    """``[runs]``: the team's remote run store, where every run is also pushed (docs/teams.md).

    Credentials, region and profile are ``[data]``'s (the standard AWS chain): only the endpoint
    may differ, for a run store on another S3-compatible service than the data.
    """

    remote: str | None = None  # s3://bucket/prefix or file:///shared/dir; None: runs stay local
    endpoint_url: str | None = None  # default: [data] endpoint_url, then AWS_ENDPOINT_URL(_S3)


@frozen
class StageConfig:
    """``[stages.NAME]``: one step of a pipeline (docs/pipelines.md)."""

    cmd: str | list[str]
    inputs: list[str] = field(default_factory=list)  # data URIs; another stage's output URI links them
    outputs: list[str] = field(default_factory=list)  # LOCAL=URI
    params: dict[str, int | float | bool | str] = field(default_factory=dict)
    env: str | None = None  # a flake output (.#env) or a store path; default [run] flake
    deps: list[str] = field(default_factory=list)  # files it depends on; default the whole commit
    after: list[str] = field(default_factory=list)  # stages to run first, beyond data links


@frozen
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    trackers: dict[str, Any] = field(default_factory=dict)  # kind -> its Settings, file order
    data: DataConfig = field(default_factory=DataConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    stages: dict[str, StageConfig] = field(default_factory=dict)
    source: str | None = None  # the file it was read from, for messages


T = TypeVar("T")


def load(repo_root: Path) -> Config:
    """The project's config; defaults when it has none.

    Read once per process while the files stay as they were: a run reads it three times (the
    command, its signing key, its remote run store). A file changed less than a second ago is read
    again each time (a rewrite within the same clock tick could keep its stat)."""
    stats = [_stat_key(repo_root / name) for name in (CONFIG_FILE, "pyproject.toml")]
    key = (str(repo_root), *stats)
    found = _LOADED.get(key)
    if found is None:
        found = _load(repo_root)
        if all(stat is None or time.time_ns() - stat[-1] > 1_000_000_000 for stat in stats):
            _LOADED[key] = found
    return found


_LOADED: dict[tuple[Any, ...], Config] = {}


def _stat_key(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _load(repo_root: Path) -> Config:
    path = repo_root / CONFIG_FILE
    if path.exists() or path.is_symlink():  # a directory or a dangling link is an error, not "none"
        return parse(_read_toml(path), source=str(path))
    pyproject = repo_root / "pyproject.toml"
    if pyproject.exists() or pyproject.is_symlink():
        tool = _read_toml(pyproject).get("tool", {})
        if not isinstance(tool, dict):
            raise ConfigError(f"{pyproject}: 'tool' must be a table, not {_kind(tool)}; "
                              "write it as [tool.NAME] sections.")
        table = tool.get("nixrepro")
        if table is not None:
            return parse(table, source=f"{pyproject} [tool.nixrepro]")
    return Config()


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``; every way it can be unreadable is one :class:`ConfigError`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        what = "is a directory" if path.is_dir() else f"cannot be read ({exc.strerror or exc})"
        raise ConfigError(f"{path} {what}; make it a readable TOML file, or remove it.") from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark from an editor is not an error
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); "
                          "TOML files are UTF-8: save it as UTF-8.") from exc
    if sys.version_info >= (3, 11):  # here, not at the top: a project without a config reads none
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        doc: dict[str, Any] = tomllib.loads(text)
        return doc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); fix the syntax.") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path} nests arrays or tables too deeply to read; "
                          "flatten it (nixrepro's keys are at most three levels deep).") from exc
    except ValueError as exc:  # an integer of more than 4300 digits
        reason = str(exc).split(";")[0]
        raise ConfigError(f"{path} holds a value too large to read ({reason}); "
                          "write a shorter one.") from exc


def parse(table: Any, source: str = CONFIG_FILE) -> Config:
    if not isinstance(table, dict):
        raise ConfigError(f"{source} must be a table of sections, not {_kind(table)}; "
                          "write it as [tool.nixrepro.run] and the like.")
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "source"}
    body = dict(table)
    trackers = _read_trackers(body, source)  # takes [trackers] and [tracker] out of body
    config = dataclasses.replace(_section(Config, body, source, "", sections), trackers=trackers)
    _check_locations(config, source)
    _check_runs(config.runs, source)
    for name in config.stages:
        if not name.strip():
            raise ConfigError(f"{source}: a stage has an empty name ([stages.\"{name}\"]); "
                              "give it a name to run it by.")
    return dataclasses.replace(config, source=source)


def _read_trackers(body: dict[str, Any], source: str) -> dict[str, Any]:
    """``[trackers.<kind>]`` tables (and the older ``[tracker]``), each validated against its
    tracker's ``Settings``; the trackers' modules are imported here only when configured."""
    if "trackers" not in body and "tracker" not in body:
        return {}  # (nor the registry: most commands read the config and never run a tracker)
    from . import trackers as registry

    tables = body.pop("trackers", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{source}: 'trackers' must be a table of [trackers.<kind>] tables, not "
                          f"{_kind(tables)}; write [trackers.wandb] or [trackers.mlflow].")
    found: dict[str, tuple[str, Any]] = {}  # kind -> (key prefix for messages, its table)
    for kind, table in tables.items():
        if kind not in registry.TRACKERS:
            raise ConfigError(f"{source}: there is no tracker {kind!r} ([trackers.{kind}]); the "
                              f"known kinds are {registry.known_kinds()}.")
        found[kind] = (f"trackers.{kind}.", table)
    legacy = body.pop("tracker", None)
    if legacy is not None:
        if not isinstance(legacy, dict):
            raise ConfigError(f"{source}: 'tracker' must be a table, not {_kind(legacy)}.")
        legacy = dict(legacy)
        kind = legacy.pop("kind", None)
        if kind is not None and not isinstance(kind, str):
            raise ConfigError(f"{source}: 'tracker.kind' must be a string, not {_kind(kind)}.")
        if kind not in (None, LEGACY_TRACKER):
            raise ConfigError(f"{source}: 'tracker.kind' must be \"wandb\" (or left out), not {kind!r}.")
        if kind is not None and LEGACY_TRACKER in found:
            raise ConfigError(f"{source}: both [tracker] kind = \"wandb\" and [trackers.wandb] "
                              "configure W&B; keep [trackers.wandb] ([tracker] is its older name).")
        if kind is None:  # no tracker, but its keys are still checked
            _tracker_settings(registry, LEGACY_TRACKER, legacy, source, "tracker.")
        else:
            found[kind] = ("tracker.", legacy)
    return {kind: _tracker_settings(registry, kind, table, source, prefix)
            for kind, (prefix, table) in found.items()}


def _tracker_settings(registry: Any, kind: str, table: Any, source: str, prefix: str) -> Any:
    cls = registry.settings_class(kind)
    keys = {f.name for f in dataclasses.fields(cls)} | ({"kind"} if prefix == "tracker." else set())
    settings = _section(cls, table, source, prefix, keys)
    problem = settings.check() if hasattr(settings, "check") else None
    if problem is not None:
        key, text = problem
        raise ConfigError(f"{source}: {prefix + key!r} {text}.")
    return settings


def _check_locations(config: Config, source: str) -> None:
    """Paths that ``~user`` cannot expand and endpoints that are not http(s) URLs fail here, in
    one sentence naming the key, rather than deep in the first command that uses them."""
    for key, value in (("data.cache_dir", config.data.cache_dir),
                       ("archive.key_file", config.archive.key_file)):
        if value:
            try:
                Path(value).expanduser()
            except RuntimeError as exc:
                raise ConfigError(f"{source}: {key!r} is {value!r}, whose user has no home "
                                  "directory here; give an absolute path or one under ~/.") from exc
    for key, value in (("data.endpoint_url", config.data.endpoint_url),
                       ("archive.endpoint_url", config.archive.endpoint_url)):
        if value is not None and not _is_http_url(value):
            raise ConfigError(f"{source}: {key!r} must be an http:// or https:// URL with a host, "
                              f"not {value!r}; for example \"http://localhost:8333\".")


def _check_runs(runs: RunsConfig, source: str) -> None:
    """``[runs]``: a remote that is no run store URL, or an endpoint that is no http(s) URL, is
    named here rather than when the first run ends and its push fails."""
    if runs.remote is not None:
        from .remote import RemoteURL

        try:
            RemoteURL.parse(runs.remote)
        except ConfigError:
            raise
        except NixreproError as exc:
            raise ConfigError(f"{source}: 'runs.remote': {exc}") from None
    if runs.endpoint_url is not None and not _is_http_url(runs.endpoint_url):
        raise ConfigError(f"{source}: 'runs.endpoint_url' must be an http:// or https:// URL with a "
                          f"host, not {runs.endpoint_url!r}; for example \"http://localhost:8333\".")


def _is_http_url(value: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _section(cls: type[T], table: Any, source: str, prefix: str, keys: set[str]) -> T:
    """The table ``prefix`` (``"trackers.wandb."``; "" for the whole file) as a ``cls``, read by
    the codec (nixrepro.codec, TOML): unknown keys, missing ones and wrong types are one
    ConfigError naming the file and the dotted key. ``keys``: the keys this table may hold."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.')!r} must be a table, not {_kind(table)}.")
    unknown = sorted(set(table) - keys)
    if unknown:
        key = prefix + unknown[0]
        known = ", ".join(sorted(prefix + k for k in keys))
        raise ConfigError(f"{source}: unknown key {key!r}; known keys here: {known}.")
    try:
        return codec.decode(cls, table, codec.TOML)
    except codec.CodecError as exc:
        raise _codec_error(exc, source, prefix) from None


def _codec_error(exc: codec.CodecError, source: str, prefix: str) -> ConfigError:
    """The codec's finding as one sentence in TOML's words, with the full dotted key."""
    key = prefix + exc.where() if exc.path else prefix.rstrip(".")
    parent = prefix + exc.where(exc.path[:-1]) if len(exc.path) > 1 else prefix.rstrip(".")
    if exc.problem == "unknown":
        here = parent + "." if parent else ""
        known = ", ".join(sorted(here + name for name in exc.known))
        return ConfigError(f"{source}: unknown key {key!r}; known keys here: {known}.")
    if exc.problem == "missing":
        return ConfigError(f"{source}: {parent!r} needs {exc.path[-1]!r}.")
    if exc.problem == "nul":
        return ConfigError(f"{source}: {key!r} holds a NUL character (\\u0000); remove it.")
    if exc.problem == "nonfinite":
        return ConfigError(f"{source}: {key!r} must be a finite number that fits a 64-bit "
                           "float (a record is strict JSON, which has no nan or inf).")
    return ConfigError(f"{source}: {key!r} must be {exc.expected}, not {exc.kind()}.")


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
