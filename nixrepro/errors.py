"""The exception hierarchy.

Every error nixrepro raises on purpose is a :class:`NixreproError`. Its message is one sentence
that names the problem and the remedy; only the CLI turns it into ``Error: ...`` and an exit code.
"""

from __future__ import annotations

from collections.abc import Sequence


class NixreproError(Exception):
    """Root of all nixrepro errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(NixreproError):
    """The user asked for something malformed (bad flag value, unknown run id, bad config)."""

    exit_code = 2


class ConfigError(UsageError):
    """nixrepro.toml or [tool.nixrepro] is invalid."""


class RefusedError(NixreproError):
    """A run was refused because it could not be reproduced (dirty tree, no lock, ...)."""


class RunNotFoundError(UsageError):
    """A run reference matched no run, or more than one."""


class ToolMissingError(NixreproError):
    """An outside program (nix, git) is not installed or not on PATH."""


class CommandError(NixreproError):
    """An outside program failed. Carries argv, exit code and the tail of stderr."""

    tool = "command"

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(self._message())

    @property
    def stderr_tail(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return "\n".join(lines[-8:])

    def _message(self) -> str:
        shown = " ".join(self.argv[:4]) + (" ..." if len(self.argv) > 4 else "")
        tail = self.stderr_tail
        return f"`{shown}` failed with exit code {self.returncode}" + (f": {tail}" if tail else "")


class NixCommandError(CommandError):
    """A ``nix`` invocation failed."""

    tool = "nix"


class GitCommandError(CommandError):
    """A ``git`` invocation failed."""

    tool = "git"


# --- Records and locks ---


class RecordError(NixreproError):
    """A record file could not be read."""


class LockError(NixreproError):
    """flake.lock is malformed or of an unknown version."""


class PathInfoParseError(NixreproError):
    """`nix path-info --json` printed something this version of nixrepro cannot read."""


class SigningError(NixreproError):
    """A signing key or a signature could not be read."""


# --- Data stores (nixrepro.datastore) ---


class DataStoreError(NixreproError):
    """A data store refused or failed an operation (missing bucket, key, version...)."""


class DataStoreUnreachable(DataStoreError):
    """The store cannot be reached right now; outputs wait in the pending queue (`nixrepro sync`)."""


class NoSuchObject(DataStoreError):
    """Nothing was ever stored at this URI."""


class DataIntegrityError(DataStoreError):
    """Downloaded bytes did not hash to the recorded sha256."""


class ItemError(NixreproError):
    """One pending item cannot be uploaded now; the others go on."""


class SyncError(NixreproError):
    """Some pending items or steps could not be uploaded (each is listed); the rest were."""


# --- Environments kept and brought back ---


class ArchiveError(NixreproError):
    """An archive could not be written or read."""


class RebuildError(NixreproError):
    """The recorded environment could not be built again."""


# --- Pipelines and trackers ---


class PipelineError(NixreproError):
    """The pipeline stopped on an error inside nixrepro (not a stage that failed)."""


class TrackerError(NixreproError):
    """A tracker (W&B) failed; the run goes on without it."""


class WandbSyncError(NixreproError):
    """`wandb sync` failed."""


# --- The remote run store (nixrepro.remote) ---


class RemoteError(NixreproError):
    """The remote run store refused or failed an operation; nothing local is changed by it."""


class RemoteUnreachable(RemoteError):
    """The remote run store cannot be reached now; pushes wait in the queue (`nixrepro sync`)."""


class NoSuchKey(RemoteError):
    """The remote run store has no object under this key."""


class RemoteConflict(RemoteError):
    """An object of the remote run store holds other bytes than the one being pushed: runs are
    immutable, so it is never overwritten."""


class RemoteIntegrityError(RemoteError):
    """A run in the remote store fails verification (hash, files or signature); it is not pulled."""
