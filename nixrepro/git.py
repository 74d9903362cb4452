"""Everything nixrepro asks of ``git``: where the repo is, which commit, and whether it is pristine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from . import proc
from .codec import frozen
from .errors import GitCommandError, RefusedError
from .redact import strip_credentials

# The run store's directory at the repository root (nixrepro.runstore uses this name), defined
# here because git must treat it as ignored, and this module stays light (no record classes).
STORE_DIR = ".nixrepro"

_HINT = "install git (Debian: `apt-get install git`)"


@frozen
class FileStatus:
    """One line of ``git status``: a two-letter code (``??`` untracked, `` M`` modified...)."""

    code: str
    path: str

    def __str__(self) -> str:
        return f"{self.code.strip() or '?'} {self.path}"


@frozen
class Snapshot:
    """The state of the work tree that a run depends on."""

    commit: str
    branch: str | None
    changes: list[FileStatus]


@frozen
class GitRepo:
    root: Path

    @classmethod
    def discover(cls, start: Path) -> GitRepo:
        """The repository containing ``start``; refuses outside one."""
        result = proc.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=start, check=False, missing_hint=_HINT
        )
        if result.returncode != 0:
            raise RefusedError(
                f"{start} is not inside a git repository; run `git init`, commit your project, "
                "and start the run from inside it."
            )
        return cls(Path(result.stdout.strip()))

    def git(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        """``git -C <root> ARGS``'s stdout; a failure raises GitCommandError (unless not ``check``)."""
        return self.call(*args, env=env, check=check).stdout

    def call(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """The one way this module runs git: in this repository, argv only, errors as GitCommandError."""
        return proc.run(["git", "-C", str(self.root), *args], error=GitCommandError, env=env,
                        input=input, check=check, missing_hint=_HINT)

    def snapshot(self) -> Snapshot:
        """HEAD, branch and changed files in one ``git status`` call; refuses a repo with no commit."""
        out = self.git("status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all")
        commit: str | None = None
        branch: str | None = None
        changes: list[FileStatus] = []
        fields = iter(out.split("\0"))
        for entry in fields:
            if entry.startswith("# branch.oid "):
                oid = entry.removeprefix("# branch.oid ")
                commit = None if oid == "(initial)" else oid
            elif entry.startswith("# branch.head "):
                head = entry.removeprefix("# branch.head ")
                branch = None if head == "(detached)" else head
            elif entry[:2] in ("1 ", "2 ", "u "):
                kind, code = entry[0], entry[2:4].replace(".", " ")
                parts = entry.split(" ", {"1": 8, "2": 9, "u": 10}[kind])
                if kind == "2":
                    next(fields, None)  # a rename is followed by its source path
                changes.append(FileStatus(code, parts[-1]))
            elif entry.startswith("? "):
                changes.append(FileStatus("??", entry[2:]))
        if commit is None:
            raise RefusedError(
                f"the repository {self.root} has no commit yet; commit your project first."
            )
        return Snapshot(commit, branch, [c for c in changes if self.is_dirt(c.path)])

    def remote_url(self) -> str | None:
        """URL of ``origin`` (or the first remote), with any credentials stripped."""
        out = self.git("config", "--get-regexp", r"^remote\..*\.url$", check=False)
        urls = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        url = urls.get("remote.origin.url") or next(iter(urls.values()), None)
        return strip_credentials(url) if url else None  # (nixrepro.redact)

    def is_dirt(self, rel_path: str) -> bool:
        """False for nixrepro's own store and for ``result`` links that ``nix build`` leaves."""
        first = rel_path.split("/", 1)[0]
        if first == STORE_DIR:
            return False
        base = rel_path.rstrip("/").rsplit("/", 1)[-1]
        if base == "result" or base.startswith("result-"):
            full = self.root / rel_path
            if full.is_symlink() and os.readlink(full).startswith("/nix/store/"):
                return False
        return True

    def tree_ids(self, paths: list[str]) -> dict[str, str]:
        """Git object ids at HEAD of ``paths`` (files or directories); ``{".": tree}`` for none.

        Refuses a path that is not in the commit.
        """
        wanted = paths or ["."]
        args = [f"HEAD:{p.strip('/') or ''}" if p not in (".", "") else "HEAD^{tree}" for p in wanted]
        result = self.call("rev-parse", "--verify", "-q", *args, check=False)
        ids = result.stdout.split()
        if result.returncode != 0 or len(ids) != len(wanted):
            for path, arg in zip(wanted, args, strict=False):
                single = self.call("rev-parse", "--verify", "-q", arg, check=False)
                if single.returncode != 0:
                    raise RefusedError(
                        f"{path!r} is not in the commit {self.root.name} is at; commit it or fix the "
                        "stage's deps."
                    )
        return dict(zip(wanted, ids, strict=True))

    def is_tracked(self, rel_path: str) -> bool:
        return self.call("ls-files", "--error-unmatch", "--", rel_path, check=False).returncode == 0

    def diff_with_untracked(self) -> bytes:
        """The full diff of the work tree against HEAD, untracked files included, as a patch.

        Uses a throw-away index so the user's staging area is left alone. Changes inside a
        checked-out submodule (which the superproject's diff shows only as "dirty") follow, as that
        submodule's own diff with its path as prefix: the patch applies with ``git apply`` to a
        checkout of the recorded commit whose submodules are updated (``git submodule update``).
        """
        return self._diff_tree("")

    def _diff_tree(self, prefix: str) -> bytes:
        import tempfile  # here: it imports shutil (and bz2, lzma), ~6 ms of every run's start

        with tempfile.TemporaryDirectory(prefix="nixrepro-index-") as tmp:
            env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", "HEAD", env=env)
            # The run store never goes into the patch. Naming it in an exclude pathspec when a
            # .gitignore already ignores it makes `git add` fail, so exclude it only when needed.
            ignored = self.call("check-ignore", "-q", STORE_DIR, check=False).returncode == 0
            excluded = [] if ignored or prefix else [f":(exclude){STORE_DIR}"]
            self.git("add", "-A", "--", ".", *excluded, env=env)
            diff = self.git("diff", "--cached", "--binary", f"--src-prefix=a/{prefix}",
                            f"--dst-prefix=b/{prefix}", "HEAD", env=env)
        patch = diff.encode(errors="surrogateescape")  # a latin-1 file's bytes, exactly
        for path in self._submodules():
            patch += GitRepo(self.root / path)._diff_tree(f"{prefix}{path}/")
        return patch

    def _submodules(self) -> list[str]:
        """Paths of the submodules checked out in this work tree (gitlinks with a .git inside)."""
        listing = self.git("ls-files", "--stage", "-z")
        paths = [entry.split("\t", 1)[1] for entry in listing.split("\0")
                 if entry.startswith("160000 ") and "\t" in entry]
        return [path for path in paths if (self.root / path / ".git").exists()]

    def show_file(self, commit: str, rel_path: str) -> bytes | None:
        """The content of ``rel_path`` at ``commit``, or None when it is not there."""
        result = self.call("show", f"{commit}:{rel_path}", check=False)
        return result.stdout.encode(errors="surrogateescape") if result.returncode == 0 else None

    def has_commits(self, *commits: str) -> bool:
        """True when every one of ``commits`` is a commit in this repository."""
        result = self.call("cat-file", "--batch-check", check=False,
                           input="".join(f"{c}^{{commit}}\n" for c in commits))
        return result.returncode == 0 and "missing" not in result.stdout

    def commits_between(self, old: str, new: str) -> list[str] | None:
        """``"<short sha> <subject>"`` of the commits in ``new`` but not ``old``, oldest first;
        None when either commit is not in this repository (one git call, no separate check)."""
        result = self.call("log", "--reverse", "--format=%h %s", f"{old}..{new}", "--", check=False)
        return result.stdout.splitlines() if result.returncode == 0 else None

    def diff_stat(self, old: str, new: str) -> str:
        return self.git("diff", "--stat", old, new).rstrip("\n")

    def add_worktree(self, path: Path, commit: str) -> None:
        """Check ``commit`` out, detached, in a new worktree at ``path``."""
        self.git("worktree", "add", "--detach", str(path), commit)

    def remove_worktree(self, path: Path) -> None:
        self.git("worktree", "remove", "--force", str(path), check=False)
        self.git("worktree", "prune", check=False)

    def relative(self, path: Path) -> str:
        return path.resolve().relative_to(self.root.resolve()).as_posix()


def format_dirty(entries: Sequence[FileStatus], limit: int = 10) -> str:
    shown = ", ".join(str(e) for e in entries[:limit])
    more = len(entries) - limit
    return shown + (f" and {more} more" if more > 0 else "")
