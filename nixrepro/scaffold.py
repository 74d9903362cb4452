"""``nixrepro init``: add nixrepro's config to an existing flake project.

New projects start from a template (``nix flake init -t <nixrepro>#minimal``); this is for a
project that already has its flake. It writes ``nixrepro.toml`` (every key optional, the rest
commented out with their defaults) and makes git ignore the run store and nix's ``result`` link.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .config import CONFIG_FILE, parse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from .errors import UsageError
from .fsutil import atomic_write

IGNORED = (".nixrepro/", "result")


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\t":
            out.append(char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def check_flake_ref(flake: str) -> None:
    """A flake output reference ``nixrepro init`` can write: one line of text, not empty."""
    if not flake.strip():
        raise UsageError("--flake is empty; give the flake output `nixrepro run` builds, e.g. .#env.")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in flake):
        raise UsageError(f"--flake {flake[:60]!r} holds a control character; give a flake output "
                         "reference such as .#env.")
    try:
        flake.encode()
    except UnicodeEncodeError as exc:
        raise UsageError(f"--flake {flake[:60]!r} is not valid text (bytes that are not UTF-8); "
                         "give a flake output reference such as .#env.") from exc


def config_text(flake: str) -> str:
    return f"""\
# nixrepro configuration. Every key is optional; docs: README.md and docs/.

[run]
flake = {toml_string(flake)}  # the environment `nixrepro run` builds when given neither --env nor --flake
# verify_contents = false  # also re-hash the closure's files before each run (nix store verify)

# [secrets]
# extra_names = ["HF_TOKEN"]  # more variable names to redact, beyond KEY/SECRET/TOKEN/PASSWORD/...

# [trackers.wandb]  # each recorded run also a W&B run (docs/trackers.md)
# project = "my-project"
# mode = "offline"

# [trackers.mlflow]  # each recorded run also an MLflow run (docs/trackers.md)
# tracking_uri = "http://mlflow.internal:5000"

# [runs]  # a shared run store every run is pushed to (docs/teams.md)
# remote = "s3://ml-team/nixrepro"

# [archive]  # where `nixrepro archive` keeps environments (docs/archive.md)
# to = "file:///srv/nix-archive"
"""


@dataclass(frozen=True)
class Scaffolded:
    written: list[Path]  # files created or changed; the user commits them


def init_project(root: Path, flake: str = ".#env", force: bool = False) -> Scaffolded:
    """Write nixrepro.toml and the .gitignore entries into the flake project at ``root``."""
    check_flake_ref(flake)
    if not (root / "flake.nix").is_file():
        raise UsageError(
            f"{root} has no flake.nix; start from a template instead: "
            "`nix flake init -t <nixrepro flake>#minimal`."
        )
    config = root / CONFIG_FILE
    if (config.exists() or config.is_symlink()) and not force:
        raise UsageError(f"{config} already exists; edit it, or pass --force to overwrite it.")
    if config.is_dir():
        raise UsageError(f"{config} is a directory; move it away, then run `nixrepro init` again.")
    gitignore = root / ".gitignore"
    present = _lines(gitignore)  # read before anything is written: a bad .gitignore writes nothing
    text = config_text(flake)
    parse(tomllib.loads(text), source=str(config))  # what is written reads back as a valid config
    atomic_write(config, text)
    written = [config]
    missing = [entry for entry in IGNORED if entry.encode() not in present
               and b"/" + entry.encode() not in present]
    if missing:
        body = b"\n".join(present)
        atomic_write(gitignore, (body + b"\n" if body else b"") + "\n".join(missing).encode() + b"\n")
        written.append(gitignore)
    return Scaffolded(written)


def _lines(gitignore: Path) -> list[bytes]:
    """The lines of .gitignore as bytes (git does not require UTF-8); [] when there is none."""
    if not (gitignore.exists() or gitignore.is_symlink()):
        return []
    try:
        return gitignore.read_bytes().splitlines()
    except OSError as exc:
        raise UsageError(f"{gitignore} cannot be read ({exc.strerror or exc}); make it a readable "
                         "file (or remove it), then run `nixrepro init` again.") from exc
