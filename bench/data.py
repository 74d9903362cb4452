"""Versioned data: hashing, re-putting an unchanged directory, many small files, big transfers.

Everything against a peer measured in the same run on the same machine, with a real SeaweedFS S3
server on loopback (as the tests use); dvc (with dvc-s3) is installed into the bench-only
environment (.cache/bench-venv) on first use:

- hashing a big file: nixrepro's sha256 vs `openssl dgst -sha256` (target >= 0.95x);
- re-putting an unchanged 20,000-file directory (`nixrepro data put`, end to end, the CLI):
  target < 0.3 s and >= 5x faster than `dvc status` on the same directory (issue #16);
- the first put of those files: vs sequential boto3 put_object (target >= 1.3x) and `dvc push`;
- a 0.25 GiB upload: vs the best of boto3's upload_file settings, each measured in the same rounds
  (target >= 1.0x, issue #16); a download: vs boto3's default download_file (target >= 1.4x).

    .venv/bin/python bench/data.py            # 20,000 files, 0.25 GiB (a few minutes)
    .venv/bin/python bench/data.py --quick    # 2,000 files, 64 MiB
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import bench_tool, compile_bytecode  # (importing _common also puts the project on sys.path)

from nixrepro.config import DataConfig
from nixrepro.datastore import DataURI
from nixrepro.datastore.cache import sha256_file
from nixrepro.datastore.ops import Data
from tests.s3server import S3Server

MIB = 1024 * 1024
# boto3 TransferConfig variants the upload is compared with: (threads, part size in MiB)
BOTO_SETTINGS = [(None, None), (16, 64), (10, 8), (8, 16), (4, 32)]


def interleaved(actions: dict[str, Callable[[], object]], repeat: int,
                after: Callable[[str], object] = lambda _: None) -> dict[str, float]:
    """Median seconds of each action, the actions interleaved round by round, so that the
    machine's (and the server's) drifts hit all alike."""
    took: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeat):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            took[name].append(time.perf_counter() - start)
            after(name)
    return {name: statistics.median(values) for name, values in took.items()}


def row(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<46} {seconds:>9.3f} s  {note}")


def make_big(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        for _ in range(size // len(block)):
            out.write(block)


def make_many(root: Path, count: int) -> None:
    for i in range(count):
        directory = root / f"d{i % 100:02d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i}.txt").write_text(f"sample {i}\n" * 8)


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files and 64 MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["hash", "many", "big"], action="append",
                        help="run only these parts (repeatable); default: all")
    args = parser.parse_args()
    compile_bytecode()  # the re-put is timed end to end, through the CLI
    parts = set(args.only or ["hash", "many", "big"])
    big_size = (64 if args.quick else 256) * MIB
    count = 2_000 if args.quick else 20_000
    dvc = bench_tool("dvc", ["dvc[s3]"]) if "many" in parts else ""
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "s3").mkdir()
        server = S3Server(tmp / "s3")
        server.start()
        os.environ.update(server.env())
        bench = Bench(tmp, server, args.repeat)
        try:
            if parts & {"hash", "big"}:
                make_big(tmp / "big.bin", big_size)
            if "hash" in parts:
                bench.hashing(tmp / "big.bin")
            if "many" in parts:
                bench.many_files(count, dvc)
            if "big" in parts:
                bench.transfers(tmp / "big.bin")
        finally:
            server.stop()


class Bench:
    def __init__(self, tmp: Path, server: S3Server, repeat: int) -> None:
        import boto3  # the peers: boto3 as a user would use it

        self.tmp, self.server, self.repeat = tmp, server, repeat
        self.env = {**os.environ, **server.env(), "XDG_CACHE_HOME": str(tmp / "xdg")}
        self.client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=server.region)
        self.data = Data(DataConfig(cache_dir=str(tmp / "cache")))
        self.bucket = server.new_bucket()

    def hashing(self, big: Path) -> None:
        size = big.stat().st_size
        print(f"hashing a {size / 2**30:g} GiB file (median of {self.repeat})")
        medians = interleaved({
            "ours": lambda: sha256_file(big),
            "openssl": lambda: run(["openssl", "dgst", "-sha256", str(big)], self.tmp, self.env),
            "sha256sum": lambda: run(["sha256sum", str(big)], self.tmp, self.env),
        }, self.repeat)
        for label, name in (("nixrepro sha256", "ours"), ("openssl dgst -sha256", "openssl"),
                            ("sha256sum", "sha256sum")):
            row(label, medians[name], f"{size / medians[name] / 1e9:.2f} GB/s")
        ratio = medians["openssl"] / medians["ours"]
        print(f"  throughput ratio vs openssl: {ratio:.2f}x  (target >= 0.95x)")

    def many_files(self, count: int, dvc: str) -> None:
        many = self.tmp / "many"
        make_many(many, count)
        print(f"\n{count:,} small files, first put (once each)")
        start = time.perf_counter()
        self.data.put(many, f"s3://{self.bucket}/many")
        ours = time.perf_counter() - start
        other = self.server.new_bucket()
        start = time.perf_counter()
        for path in sorted(p for p in many.rglob("*") if p.is_file()):
            self.client.put_object(Bucket=other, Key=str(path.relative_to(many)), Body=path.read_bytes())
        sequential = time.perf_counter() - start
        row("nixrepro data put (library)", ours, f"{count / ours:,.0f} files/s")
        row("boto3 put_object, sequential", sequential, f"{count / sequential:,.0f} files/s")
        print(f"  ratio: {sequential / ours:.2f}x faster  (target >= 1.3x)")

        repo = self.tmp / "dvcrepo"
        repo.mkdir()
        shutil.copytree(many, repo / "many")  # the same files, in dvc's repository
        for argv in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                     [dvc, "add", "many"]):
            run(argv, repo, self.env)
        put = [str(Path(sys.executable).parent / "nixrepro"), "data", "put", str(many),
               f"s3://{self.bucket}/many"]
        run(put, self.tmp, self.env)  # the CLI's own cache learns the stats once
        print(f"\nre-putting the unchanged {count:,}-file directory (median of {self.repeat}, interleaved)")
        medians = interleaved({
            "ours": lambda: run(put, self.tmp, self.env),
            "dvc": lambda: run([dvc, "status"], repo, self.env),
            "python": lambda: run([sys.executable, "-c", "pass"], self.tmp, self.env),
        }, self.repeat)
        row("nixrepro data put (CLI, end to end)", medians["ours"], "target < 0.3 s")
        row("dvc status", medians["dvc"])
        row("python -c pass (the interpreter's start)", medians["python"])
        print(f"  ratio: {medians['dvc'] / medians['ours']:.2f}x faster than dvc status  (target >= 5x)")
        remote = self.server.new_bucket()
        run([dvc, "remote", "add", "-d", "bench", f"s3://{remote}/dvc"], repo, self.env)
        run([dvc, "remote", "modify", "bench", "endpointurl", self.server.endpoint_url], repo, self.env)
        start = time.perf_counter()
        pushed = subprocess.run([dvc, "push"], cwd=repo, env=self.env, capture_output=True)
        push = time.perf_counter() - start
        if pushed.returncode != 0:
            print(f"  dvc push failed: {pushed.stderr.decode(errors='replace').strip()[-300:]}")
            return
        row("dvc push (first)", push, f"{count / push:,.0f} files/s")
        print(f"  first put vs dvc push: {push / ours:.2f}x faster  (target > 1x)")

    def transfers(self, big: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        size = big.stat().st_size

        def mb(seconds: float) -> str:
            return f"{size / seconds / 1e6:.0f} MB/s"

        print(f"\na {size / 2**30:g} GiB upload and download (median of {self.repeat}, interleaved)")
        uri = DataURI.parse(f"s3://{self.bucket}/big.bin")
        store = self.data.store(uri)
        sha = sha256_file(big)
        self.client.upload_file(str(big), self.bucket, "warm-up.bin")  # the server grows its volumes
        versions: list[str] = []
        uploads: dict[str, Callable[[], object]] = {
            "ours": lambda: versions.append(store.put_file(uri, big, sha).version_id)}
        for threads, part in BOTO_SETTINGS:
            config = TransferConfig() if threads is None else TransferConfig(
                max_concurrency=threads, multipart_chunksize=part * MIB)
            name = "default" if threads is None else f"{threads} threads {part} MiB"
            uploads[name] = (lambda c=config, n=name: self.client.upload_file(
                str(big), self.bucket, f"boto-{n}.bin", Config=c))
        medians = interleaved(uploads, self.repeat)
        row("nixrepro upload", medians["ours"], mb(medians["ours"]))
        best = min((value, name) for name, value in medians.items() if name != "ours")
        for name, value in medians.items():
            if name != "ours":
                row(f"boto3 upload_file, {name}", value, mb(value) + ("  <- best" if name == best[1] else ""))
        print(f"  ratio vs the best boto3 setting: {best[0] / medians['ours']:.2f}x  (target >= 1.0x)")

        target = self.tmp / "down.bin"
        downloads: dict[str, Callable[[], object]] = {
            "ours": lambda: store.download(uri, versions[-1], target, size=size),
            "default": lambda: self.client.download_file(self.bucket, "boto-default.bin", str(target)),
        }
        medians = interleaved(downloads, self.repeat, after=lambda _: target.unlink())
        row("nixrepro download", medians["ours"], mb(medians["ours"]))
        row("boto3 download_file, default", medians["default"], mb(medians["default"]))
        print(f"  ratio vs boto3 default: {medians['default'] / medians['ours']:.2f}x  (target >= 1.4x)")


if __name__ == "__main__":
    main()
