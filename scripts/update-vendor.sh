#!/usr/bin/env bash
# Refetches the charting library the web viewer and the HTML report ship (uPlot, MIT) from the npm
# registry at the pinned version, checks the tarball's sha256 and copies the files nixrepro uses
# into nixrepro/ui/static/uplot/. To move to a new version: set VERSION, run with --new to print the
# new tarball's sha256, check the release notes, set SHA256, run again, rerun the UI tests, commit.
#   bash scripts/update-vendor.sh         # refetch the pinned version (and check it)
#   bash scripts/update-vendor.sh --new   # fetch VERSION and print its sha256 instead of checking
set -euo pipefail
VERSION=1.6.32
SHA256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d  # uplot-1.6.32.tgz
cd "$(dirname "$0")/.."
dest=nixrepro/ui/static/uplot
command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$VERSION" >/dev/null)
tarball="$work/uplot-$VERSION.tgz"
got="$(sha256sum "$tarball" | cut -d' ' -f1)"
if [ "${1:-}" = "--new" ]; then
  echo "uplot-$VERSION.tgz sha256 $got: set SHA256 to it in $0 and run it again"
  exit 0
fi
if [ "$got" != "$SHA256" ]; then
  echo "uplot-$VERSION.tgz has sha256 $got, not the pinned $SHA256; nothing was changed" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
mkdir -p "$dest"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/"
# what the package ships, with the sha256 of each file: tests/test_ui_vendor.py checks them
{
  echo "uPlot $VERSION from the npm registry (https://www.npmjs.com/package/uplot), MIT license (LICENSE)"
  echo "tarball uplot-$VERSION.tgz sha256 $SHA256"
  (cd "$dest" && sha256sum uPlot.iife.min.js uPlot.min.css LICENSE)
} > "$dest/VERSION"
echo "vendored uPlot $VERSION into $dest"
