"""Builders for the self-contained projects the tests (and bench/) run nixrepro on.

No nixpkgs here: environments are derivations with ``builder = "/bin/sh"`` (docs/architecture.md, "Tests"),
flake inputs are local ``git+file://`` repositories. Everything is real git and the real Nix store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NIX_CONFIG = "\n".join(
    ["experimental-features = nix-command flakes", "substituters =", "build-users-group ="]
)
GIT_ID = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def sh(argv: list[str], cwd: Path | None = None, check: bool = True, *,
       env: dict[str, str] | None = None, input: str | None = None) -> str:
    """Run ``argv`` (a test's git or nix call) and return its stdout; a failure is an AssertionError.

    Keyword-only and closed: a misspelt option is a TypeError, not silently dropped."""
    env = {**os.environ, **GIT_ID, **(env or {})}
    result = subprocess.run(argv, cwd=cwd, env=env, input=input, capture_output=True, text=True,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def git_commit(repo: Path, message: str = "commit") -> str:
    sh(["git", "add", "-A"], cwd=repo)
    sh(["git", "commit", "-qm", message], cwd=repo)
    return sh(["git", "rev-parse", "HEAD"], cwd=repo).strip()


def env_flake(dep_url: str, *, label: str = "env", extra_paths: int = 0, version: str = "1.0",
              variant: str = "", input_name: str = "dep") -> str:
    """A flake.nix whose ``packages.<system>.env`` is a tiny environment.

    The env has ``bin/greet`` (prints the dep's greeting and ``label``) and references
    ``extra_paths`` text files made with builtins.toFile, so its closure has ``extra_paths + 1``
    store paths without building anything else. A different ``variant`` gives a different store
    path at the same name and version (a rebuild). ``input_name`` names the one input (``nixpkgs``
    for a test that looks for the nixpkgs rev).
    """
    alias = "" if input_name == "dep" else f"dep = {input_name};"  # `dep = dep` would recurse
    return f"""{{
  inputs.{input_name}.url = "{dep_url}";
  outputs = {{ self, {input_name} }}:
    let
      {alias}
      system = "x86_64-linux";
      extras = builtins.genList (i: builtins.toFile "extra-${{toString i}}-{label}" "${{toString i}}")
        {extra_paths};
    in {{
      packages.${{system}}.env = derivation {{
        name = "{label}-{version}";
        inherit system;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        extras = builtins.concatStringsSep "\\n" extras;
        passAsFile = [ "extras" ];
        args = [ "-c" ''
          mkdir -p $out/bin
          cp $extrasPath $out/extras
          printf '#!/bin/sh\\necho ${{dep.lib.greeting}} from {label}\\n' > $out/bin/greet
          chmod +x $out/bin/greet
          {f"echo {variant} > $out/variant" if variant else ""}
        '' ];
      }};
    }};
}}
"""


@dataclass
class Project:
    """A git repository with a flake whose one input is another local git repository."""

    root: Path
    dep: Path

    def build_env(self) -> str:
        out = sh(["nix", "build", "--no-link", "--json", ".#env"], cwd=self.root)
        return str(json.loads(out)[0]["outputs"]["out"])

    def commit(self, message: str = "change") -> str:
        return git_commit(self.root, message)

    def nixrepro(self, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(list(args), cwd=cwd or self.root, env=env)

    @property
    def runs_dir(self) -> Path:
        return self.root / ".nixrepro" / "runs"

    def record(self, ref: str = "@latest") -> dict[str, Any]:
        """The record of ``ref`` as a user reads it, ``nixrepro show REF --json``."""
        return shown_record(self.root, ref)


def shown_record(cwd: Path, ref: str = "@latest") -> dict[str, Any]:
    """``nixrepro show REF --json`` in ``cwd``, which must succeed: the one way tests read a record."""
    result = run_cli(["show", ref, "--json"], cwd=cwd)
    assert result.returncode == 0, f"nixrepro show {ref} failed: {result.stderr}"
    return dict(json.loads(result.stdout))


def set_env(project: Project, *, label: str, extra_paths: int = 0, version: str = "1.0",
            variant: str = "") -> str:
    """Rewrite the project's env (same dep input), commit it; returns the commit."""
    dep_url = f"git+file://{project.dep}"
    (project.root / "flake.nix").write_text(
        env_flake(dep_url, label=label, extra_paths=extra_paths, version=version, variant=variant)
    )
    return project.commit(f"env {label} {version} {variant}".strip())


def delete_store_paths(paths: list[str]) -> None:
    """Delete exactly these store paths (never a garbage collection of the whole store).

    nix 2.8 refuses to delete a path whose referrer is still there, even when both are named in
    one call, so paths are deleted one at a time, referrers first, until none is left.
    """
    left = [p for p in paths if Path(p).exists()]
    for _ in range(len(left) + 1):
        if not left:
            return
        still = []
        for path in left:
            result = subprocess.run(["nix-store", "--delete", path], capture_output=True, text=True)
            if result.returncode != 0 and Path(path).exists():
                still.append(path)
        if len(still) == len(left):
            raise AssertionError(f"cannot delete {still}: {result.stderr}")
        left = still


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``nixrepro ARGS`` as a user types it, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "nixrepro", *args], cwd=cwd, env=env or dict(os.environ),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def cli_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``nixrepro ARGS`` through the console entry point, in this process: for behaviour that is
    the command line's own (option parsing, config errors, the error line and exit code), ~0.3 s
    quicker than a subprocess. Runs that start processes or handle signals use :func:`run_cli`."""
    import contextlib
    import io

    from nixrepro.cli import main

    out, err = io.StringIO(), io.StringIO()
    before = Path.cwd()
    code: int | str | None = 0
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(before)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(["nixrepro", *args], returncode, out.getvalue(), err.getvalue())


def make_project(base: Path, *, label: str = "env", extra_paths: int = 0,
                 greeting: str = "hello", input_name: str = "dep") -> Project:
    """``greeting`` other than "hello" gives the dep input a source of its own in the store."""
    dep = base / "dep"
    dep.mkdir(parents=True)
    sh(["git", "init", "-q", "-b", "main"], cwd=dep)
    (dep / "flake.nix").write_text(f'{{ outputs = {{ self }}: {{ lib.greeting = "{greeting}"; }}; }}\n')
    git_commit(dep, "dep")
    root = base / "project"
    root.mkdir()
    sh(["git", "init", "-q", "-b", "main"], cwd=root)
    (root / "flake.nix").write_text(env_flake(f"git+file://{dep}", label=label, extra_paths=extra_paths,
                                              input_name=input_name))
    (root / "train.py").write_text(TRAIN_PY)
    sh(["git", "add", "-A"], cwd=root)  # a git flake sees only what git knows
    sh(["nix", "flake", "lock"], cwd=root)
    git_commit(root, "init")
    return Project(root=root, dep=dep)


TRAIN_PY = """\
import os, sys
import nixrepro
p = nixrepro.params()
lr = p.get("lr", 0.1)
loss = 1.0
for step in range(5):
    loss = loss * (1 - lr)
    nixrepro.log({"loss": loss}, step=step)
print("final loss", loss)
"""
