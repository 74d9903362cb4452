"""The one flake-reference parser: every spelling nix accepts for a local flake is found local,
every fetched one is not, and the output attribute is split off as nix splits it."""

from __future__ import annotations

import pytest

from nixrepro.nix import FlakeRef


@pytest.mark.parametrize(("text", "source", "attr", "local"), [
    (".#env", ".", "env", "."),
    ("#env", "", "env", "."),
    (".", ".", None, "."),
    ("./sub#experiment", "./sub", "experiment", "./sub"),
    ("/srv/project#env", "/srv/project", "env", "/srv/project"),
    ("path:/srv/project#env", "path:/srv/project", "env", "/srv/project"),
    ("path:.#env", "path:.", "env", "."),
    ("git+file:///srv/project?rev=abc#env", "git+file:///srv/project?rev=abc", "env", "/srv/project"),
    ("github:NixOS/nixpkgs/nixos-24.05#hello", "github:NixOS/nixpkgs/nixos-24.05", "hello", None),
    ("git+https://example.org/r.git?ref=main#env", "git+https://example.org/r.git?ref=main", "env", None),
    ("tarball+https://example.org/a.tar.gz", "tarball+https://example.org/a.tar.gz", None, None),
])
def test_a_flake_ref_splits_into_its_flake_and_output_and_says_whether_it_is_local(
        text: str, source: str, attr: str | None, local: str | None) -> None:
    ref = FlakeRef.parse(text)
    assert (ref.source, ref.attr, ref.local_path) == (source, attr, local)
