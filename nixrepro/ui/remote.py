"""The remote run store as the viewer reads it (``nixrepro ui --remote``, ``nixrepro report`` of
a remote run): listed from the remote's index, each run pulled only when a page shows it.

A run is pulled as ``nixrepro pull`` pulls it (nixrepro.remote.store.RemoteRunStore.pull: its
record's hashes, its signature against the project's trusted keys, every file against the
record, all checked before anything is written) but into a temporary directory of the viewer's
own, never into the project's ``.nixrepro/``: looking at a colleague's run leaves no trace in the
local store. The directory is removed when the viewer stops (:meth:`RemoteRuns.close`).

The listing is read again when a page asks for it and the last one is older than
:data:`REFRESH_S`, so 10,000 remote runs cost one listing (about a second) per half minute, not
one per page.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import RunNotFoundError
from ..record import RunRecord
from ..runstore import RECORD_FILE, RunStore, is_group_ref
from .readonly import RunIndex

if TYPE_CHECKING:
    from ..remote.store import RemoteRunStore

REFRESH_S = 30.0  # a listing younger than this is shown again


class NoRemoteMatch(RunNotFoundError):
    """No remote run or group matches the reference (not: several do)."""


class RemoteRuns:
    """The runs of a remote run store, with the methods of :class:`RunIndex`. Thread-safe."""

    def __init__(self, remote: RemoteRunStore, repo_root: Path, trusted_keys: Sequence[str],
                 team_keys: bool, refresh_s: float = REFRESH_S) -> None:
        self.remote = remote
        self.repo_root = repo_root
        self.trusted_keys = list(trusted_keys)
        self.team_keys = team_keys
        self.refresh_s = refresh_s
        self._scratch = Path(tempfile.mkdtemp(prefix="nixrepro-ui-remote-"))
        self.pulled = RunStore(self._scratch / "store")  # the pulled runs: the viewer's, not the project's
        self._lock = threading.Lock()
        self._listing: tuple[float, list[RunRecord], dict[str, RunRecord]] | None = None
        self.listed_at: float | None = None

    @classmethod
    def for_project(cls, repo_root: Path) -> RemoteRuns | None:
        """The project's remote run store ([runs] remote) as the viewer reads it; None without one."""
        from ..archive import trusted_keys
        from ..config import load as load_config
        from ..remote.pending import open_remote

        remote = open_remote(repo_root)
        if remote is None:
            return None
        team = bool(load_config(repo_root).archive.trusted_keys)
        return cls(remote, repo_root, trusted_keys(repo_root), team_keys=team)

    @property
    def root(self) -> Path:
        """The project's local store root (the diff reads the project's git from its parent)."""
        return self.repo_root / ".nixrepro"

    @property
    def label(self) -> str:
        return f"the remote run store {self.remote.url}"

    def summaries(self) -> list[RunRecord]:
        return self._listed()[0]

    def _listed(self, fresh: bool = False) -> tuple[list[RunRecord], dict[str, RunRecord]]:
        with self._lock:
            now = time.monotonic()
            if fresh or self._listing is None or now - self._listing[0] >= self.refresh_s:
                records = self.remote.summaries()
                self._listing = (now, records, {r.id: r for r in records})
                self.listed_at = time.time()
            return self._listing[1], self._listing[2]

    def has(self, run_id: str) -> bool:
        """Whether the remote lists a run of exactly this id (pulled already, or in the listing,
        or listed since: a run pushed a moment ago is found by listing again)."""
        if (self.pulled.run_dir(run_id) / RECORD_FILE).is_file() or run_id in self._listed()[1]:
            return True
        return run_id in self.remote.match(run_id)

    def by_id(self) -> dict[str, RunRecord]:
        return dict(self._listed()[1])

    def load(self, run_id: str) -> RunRecord:
        """The complete record of a remote run, pulled and verified into the viewer's directory
        the first time (a run that fails verification is a RemoteIntegrityError, nothing kept)."""
        return self.remote.pull(self.pulled, run_id, self.trusted_keys, team_keys=self.team_keys)

    def run_dir(self, run_id: str) -> Path:
        self.load(run_id)
        return self.pulled.run_dir(run_id)

    def resolve(self, ref: str) -> RunRecord:
        """A remote run by id, unique prefix, @latest or @latest~N; complete (pulled)."""
        records, by_id = self._listed()
        if ref.startswith("@"):
            back = ref[len("@latest~"):] if ref.startswith("@latest~") else "0" if ref == "@latest" else ""
            if not back.isdigit() or len(back) > 9 or int(back) >= len(records):
                raise NoRemoteMatch(f"no run matches {_shown(ref)} in {self.label} (it lists "
                                       f"{len(records)} runs); `nixrepro runs --remote` lists them.")
            return self.load(records[int(back)].id)
        matches = [ref] if ref in by_id else [run_id for run_id in by_id if ref and run_id.startswith(ref)]
        if not matches:
            matches = self.remote.match(ref)  # pushed since the listing was read
        if len(matches) > 1:
            raise RunNotFoundError(f"{_shown(ref)} matches {len(matches)} runs of {self.remote.url} "
                                   f"({', '.join(sorted(matches)[:5])}); give more characters of the id.")
        if not matches:
            raise NoRemoteMatch(f"no run matches {_shown(ref)} in {self.label}; `nixrepro runs "
                                "--remote` lists them.")
        return self.load(matches[0])

    def resolve_many(self, refs: list[str]) -> list[RunRecord]:
        """Runs and repeat groups (g...: every run of the group), each once, in order; complete."""
        from ..groups import groups_of

        found: dict[str, RunRecord] = {}
        for ref in refs:
            if not is_group_ref(ref):
                record = self.resolve(ref)
                found.setdefault(record.id, record)
                continue
            groups = groups_of(self.summaries())
            matches = [ref] if ref in groups else sorted(g for g in groups if g.startswith(ref))
            if not matches:
                raise NoRemoteMatch(f"no repeat group matches {_shown(ref)} in {self.label}; "
                                    "`nixrepro runs --remote` lists them.")
            if len(matches) > 1:
                raise RunNotFoundError(f"{_shown(ref)} matches {len(matches)} groups "
                                       f"({', '.join(matches[:5])}); give more characters.")
            for run in groups[matches[0]].runs:
                found.setdefault(run.id, self.load(run.id))
        return list(found.values())

    def close(self) -> None:
        """Remove the pulled runs (the viewer's own directory)."""
        shutil.rmtree(self._scratch, ignore_errors=True)


class LocalThenRemote:
    """The local store first, then the remote one: ``nixrepro report`` of runs that may be either
    (a RUN not found here is looked up in the remote, as every command that takes RUN does, but
    pulled into the viewer's directory, not the local store). The remote is opened only when a
    RUN is not found here."""

    label = None

    def __init__(self, local: RunIndex, remote: Callable[[], RemoteRuns | None]) -> None:
        self.local = local
        self._open_remote = remote
        self._remote: RemoteRuns | None = None
        self._opened = False

    @property
    def root(self) -> Path:
        return self.local.root

    def _remote_runs(self) -> RemoteRuns | None:
        if not self._opened:
            self._opened = True
            self._remote = self._open_remote()
        return self._remote

    def resolve_many(self, refs: list[str]) -> list[RunRecord]:
        found: dict[str, RunRecord] = {}
        for ref in refs:
            try:
                records = self.local.resolve_many([ref])
            except RunNotFoundError:
                remote = self._remote_runs()
                if remote is None:
                    raise
                try:
                    records = remote.resolve_many([ref])
                except NoRemoteMatch:
                    what = "repeat group" if is_group_ref(ref) else "run"
                    raise RunNotFoundError(
                        f"no {what} matches {_shown(ref)} in {self.local.root} or in {remote.label}; "
                        "`nixrepro runs` and `nixrepro runs --remote` list them.") from None
            for record in records:
                found.setdefault(record.id, record)
        return list(found.values())

    def resolve(self, ref: str) -> RunRecord:
        return self.resolve_many([ref])[0]

    def has(self, run_id: str) -> bool:
        return self.local.has(run_id) or (self._remote is not None and self._remote.has(run_id))

    def load(self, run_id: str) -> RunRecord:
        if self.local.has(run_id) or self._remote is None:
            return self.local.load(run_id)
        return self._remote.load(run_id)

    def run_dir(self, run_id: str) -> Path:
        if self.local.has(run_id) or self._remote is None:
            return self.local.run_dir(run_id)
        return self._remote.run_dir(run_id)

    def summaries(self) -> list[RunRecord]:
        """The local runs, and the remote's that are not here once a remote run was asked for."""
        local = self.local.summaries()
        if self._remote is None:
            return local
        here = {r.id for r in local}
        return local + [r for r in self._remote.summaries() if r.id not in here]

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()


def _shown(ref: str) -> str:
    return repr(ref if len(ref) <= 40 else ref[:40] + "...")
