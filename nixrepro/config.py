"""Configuration: ``nixrepro.toml`` at the git root, or ``[tool.nixrepro]`` in pyproject.toml.

Read once into frozen dataclasses and passed down explicitly. Unknown keys and wrong types are
errors that name the file and the key. Each section is a dataclass below; a new section is a new
dataclass and a field of :class:`Config`, and the loader validates it from its type hints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError, NixreproError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FILE = "nixrepro.toml"


@dataclass(frozen=True)
class RunConfig:
    """``[run]``: defaults for ``nixrepro run``."""

    flake: str | None = None  # used when neither --env nor --flake is given, e.g. ".#env"
    verify_contents: bool = False


@dataclass(frozen=True)
class SecretsConfig:
    """``[secrets]``: more environment variable names (substrings, any case) to redact."""

    extra_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ArchiveConfig:
    """``[archive]``: where ``nixrepro archive`` keeps closures, and the key that signs them."""

    to: str | None = None  # file:///dir or s3://bucket/prefix
    key_file: str | None = None  # secret signing key; default ~/.config/nixrepro/archive-key.sec
    endpoint_url: str | None = None  # S3-compatible service (SeaweedFS, MinIO); None: AWS
    # public keys ("name:base64") trusted besides the project key's: a team's keys, committed here,
    # check records and archives on every machine (nixrepro.archive.trusted_keys)
    trusted_keys: list[str] = field(default_factory=list)


# [trackers.<kind>]: the dashboards every recorded run also goes to (docs/trackers.md). Each table is
# read into its tracker module's Settings dataclass (nixrepro.trackers.TRACKERS); the older
# [tracker] kind = "wandb" table is read as [trackers.wandb].
LEGACY_TRACKER = "wandb"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class RunsConfig:
    """``[runs]``: the team's remote run store, where every run is also pushed (docs/teams.md).

    Credentials, region and profile are ``[data]``'s (the standard AWS chain): only the endpoint
    may differ, for a run store on another S3-compatible service than the data.
    """

    remote: str | None = None  # s3://bucket/prefix or file:///shared/dir; None: runs stay local
    endpoint_url: str | None = None  # default: [data] endpoint_url, then AWS_ENDPOINT_URL(_S3)


@dataclass(frozen=True)
class StageConfig:
    """``[stages.NAME]``: one step of a pipeline (docs/pipelines.md)."""

    cmd: str | list[str]
    inputs: list[str] = field(default_factory=list)  # data URIs; another stage's output URI links them
    outputs: list[str] = field(default_factory=list)  # LOCAL=URI
    params: dict[str, int | float | bool | str] = field(default_factory=dict)
    env: str | None = None  # a flake output (.#env) or a store path; default [run] flake
    deps: list[str] = field(default_factory=list)  # files it depends on; default the whole commit
    after: list[str] = field(default_factory=list)  # stages to run first, beyond data links


@dataclass(frozen=True)
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
    """The project's config; defaults when it has none."""
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
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.')!r} must be a table, not {_kind(table)}.")
    unknown = sorted(set(table) - keys)
    if unknown:
        key = prefix + unknown[0]
        known = ", ".join(sorted(prefix + k for k in keys))
        raise ConfigError(f"{source}: unknown key {key!r}; known keys here: {known}.")
    required = [f.name for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in table]
    if missing:
        raise ConfigError(f"{source}: {prefix.rstrip('.')!r} needs {missing[0]!r}.")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, value in table.items():
        values[name] = _value(hints[name], value, source, prefix + name)
    return cls(**values)


def _value(hint: Any, value: Any, source: str, key: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        fields = {f.name for f in dataclasses.fields(hint)}
        return _section(hint, value, source, key + ".", fields)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key!r} must be a list, not {_kind(value)}.")
        return [_value(args[0], item, source, f"{key}[{index}]") for index, item in enumerate(value)]
    if origin is dict:  # a table of named entries, e.g. [stages.NAME]
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key!r} must be a table, not {_kind(value)}.")
        return {name: _value(args[1], item, source, f"{key}.{name}") for name, item in value.items()}
    options = [arg for arg in args if arg is not type(None)] if args else [hint]
    for option in options:
        if typing.get_origin(option) is list and isinstance(value, list):
            return _value(option, value, source, key)
        if isinstance(option, type) and _is(value, option):
            return _checked(option, value, source, key)
    expected = [_EXPECTED.get(o, str(o)) for o in options]
    listed = ", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 else expected[0]
    raise ConfigError(f"{source}: {key!r} must be {listed}, not {_kind(value)}.")


def _checked(option: type, value: Any, source: str, key: str) -> Any:
    """One reader per scalar type: numbers finite, strings without NUL (no path, argv entry or
    environment value can hold one; TOML can, as an escape)."""
    if option is float:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a 64-bit float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{source}: {key!r} must be a finite number that fits a 64-bit "
                              "float (a record is strict JSON, which has no nan or inf).")
        return number
    if option is str and "\x00" in value:
        raise ConfigError(f"{source}: {key!r} holds a NUL character (\\u0000); remove it.")
    return value


_EXPECTED: dict[Any, str] = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
                             list[str]: "a list of strings"}


def _is(value: Any, option: type) -> bool:
    if isinstance(value, bool):
        return option is bool
    if option is float:
        return isinstance(value, (int, float))
    return isinstance(value, option)


def _kind(value: Any) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number",
             list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)
