"""Versioned data: hashing, re-putting an unchanged directory, many small files, big transfers.

Everything against a baseline measured in the same run on the same machine, with a real
SeaweedFS S3 server on loopback (as the tests use):

- hashing a big file: nixrepro's sha256 vs `openssl dgst -sha256` (target >= 0.95x) and sha256sum;
- re-putting an unchanged N-file directory (`nixrepro data put`, end to end): target < 0.5 s and
  >= 4x faster than `dvc status` on the same directory;
- the first put of N small files: vs sequential boto3 put_object (target >= 1.3x) and `dvc push`;
- a big download: vs boto3's default download_file (target >= 1.4x); a big upload: vs the best
  boto3 upload_file setting (target >= 0.95x).

    .venv/bin/python bench/data.py            # 2 GiB, 20,000 files (several minutes)
    .venv/bin/python bench/data.py --quick    # 256 MiB, 2,000 files
DVC_BIN points at a dvc with dvc-s3 (default: `dvc` on PATH); without it the dvc rows are skipped.
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

from _common import compile_bytecode  # (importing _common also puts the project on sys.path)

from nixrepro.config import DataConfig
from nixrepro.datastore import DataURI
from nixrepro.datastore.cache import sha256_file
from nixrepro.datastore.ops import Data
from tests.s3server import S3Server


def median_time(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def row(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<44} {seconds:>9.3f} s  {note}")


def make_big(path: Path, size: int) -> None:
    block = os.urandom(1024 * 1024)
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
    parser.add_argument("--quick", action="store_true", help="256 MiB and 2,000 files")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["hash", "many", "big"], action="append",
                        help="run only these parts (repeatable); default: all")
    args = parser.parse_args()
    compile_bytecode()  # the re-put is timed end to end, through the CLI
    parts = set(args.only or ["hash", "many", "big"])
    big_size = (256 if args.quick else 2048) * 1024 * 1024
    count = 2_000 if args.quick else 20_000
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
                bench.many_files(count)
            if "big" in parts:
                bench.transfers(tmp / "big.bin")
        finally:
            server.stop()


class Bench:
    def __init__(self, tmp: Path, server: S3Server, repeat: int) -> None:
        import boto3  # the baselines: boto3 as a user would use it, default settings

        self.tmp, self.server, self.repeat = tmp, server, repeat
        self.env = {**os.environ, **server.env(), "XDG_CACHE_HOME": str(tmp / "xdg")}
        self.client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name=server.region)
        self.data = Data(DataConfig(cache_dir=str(tmp / "cache")))
        self.bucket = server.new_bucket()

    def hashing(self, big: Path) -> None:
        size = big.stat().st_size
        print(f"hashing a {size / 2**30:g} GiB file (median of {self.repeat})")
        ours = median_time(lambda: sha256_file(big), self.repeat)
        openssl = median_time(lambda: run(["openssl", "dgst", "-sha256", str(big)], self.tmp, self.env),
                              self.repeat)
        coreutils = median_time(lambda: run(["sha256sum", str(big)], self.tmp, self.env), 1)
        row("nixrepro sha256", ours, f"{size / ours / 1e9:.2f} GB/s")
        row("openssl dgst -sha256", openssl, f"{size / openssl / 1e9:.2f} GB/s")
        row("sha256sum", coreutils, f"{size / coreutils / 1e9:.2f} GB/s")
        print(f"  throughput ratio vs openssl: {openssl / ours:.2f}x  (target >= 0.95x)")

    def many_files(self, count: int) -> None:
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

        print(f"\nre-putting the unchanged {count:,}-file directory (median of {self.repeat})")
        put = [sys.executable, "-m", "nixrepro", "data", "put", str(many), f"s3://{self.bucket}/many"]
        run(put, self.tmp, self.env)  # the CLI's own cache learns the stats once
        reput = median_time(lambda: run(put, self.tmp, self.env), self.repeat)
        row("nixrepro data put (CLI, end to end)", reput, "target < 0.5 s")
        dvc = os.environ.get("DVC_BIN") or shutil.which("dvc")
        if not dvc:
            print("  dvc: skipped (set DVC_BIN or put dvc on PATH)")
            return
        repo = self.tmp / "dvcrepo"
        repo.mkdir()
        shutil.copytree(many, repo / "many")
        for argv in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                     [dvc, "add", "many"]):
            run(argv, repo, self.env)
        status = median_time(lambda: run([dvc, "status"], repo, self.env), self.repeat)
        row("dvc status", status)
        print(f"  ratio: {status / reput:.2f}x faster than dvc status  (target >= 4x)")
        remote = self.server.new_bucket()
        run([dvc, "remote", "add", "-d", "bench", f"s3://{remote}/dvc"], repo, self.env)
        run([dvc, "remote", "modify", "bench", "endpointurl", self.server.endpoint_url], repo, self.env)
        start = time.perf_counter()
        pushed = subprocess.run([dvc, "push"], cwd=repo, env=self.env, capture_output=True)
        push = time.perf_counter() - start
        if pushed.returncode != 0:
            print("  dvc push: skipped (this dvc has no S3 support: pip install dvc-s3)")
            return
        row("dvc push (first)", push, f"{count / push:,.0f} files/s")
        print(f"  first put vs dvc push: {push / ours:.2f}x faster  (target > 1x)")

    def transfers(self, big: Path) -> None:
        from boto3.s3.transfer import TransferConfig

        size = big.stat().st_size

        def mb(seconds: float) -> str:
            return f"{size / seconds / 1e6:.0f} MB/s"

        print(f"\na {size / 2**30:g} GiB upload and download")
        uri = DataURI.parse(f"s3://{self.bucket}/big.bin")
        store = self.data.store(uri)
        sha = sha256_file(big)
        self.client.upload_file(str(big), self.bucket, "warm-up.bin")  # the server grows its volumes
        start = time.perf_counter()
        version = store.put_file(uri, big, sha)
        ours_up = time.perf_counter() - start
        tuned = TransferConfig(max_concurrency=16, multipart_chunksize=64 * 2**20)
        start = time.perf_counter()
        self.client.upload_file(str(big), self.bucket, "big-default.bin")
        boto_up = time.perf_counter() - start
        start = time.perf_counter()
        self.client.upload_file(str(big), self.bucket, "big-tuned.bin", Config=tuned)
        boto_up_tuned = time.perf_counter() - start
        row("nixrepro upload", ours_up, mb(ours_up))
        row("boto3 upload_file, default", boto_up, mb(boto_up))
        row("boto3 upload_file, 16 threads 64 MiB", boto_up_tuned, mb(boto_up_tuned))
        print(f"  ratio vs the best boto3 setting: {min(boto_up, boto_up_tuned) / ours_up:.2f}x  "
              "(target >= 0.95x)")

        target = self.tmp / "down.bin"
        downloads: dict[str, Callable[[], None]] = {
            "ours": lambda: store.download(uri, version.version_id, target),
            "default": lambda: self.client.download_file(self.bucket, "big-default.bin", str(target)),
            "tuned": lambda: self.client.download_file(self.bucket, "big-default.bin", str(target),
                                                       Config=tuned),
        }
        took: dict[str, list[float]] = {name: [] for name in downloads}
        for _ in range(self.repeat):  # interleaved rounds: the server's drifts hit all alike
            for name, download in downloads.items():
                start = time.perf_counter()
                download()
                took[name].append(time.perf_counter() - start)
                target.unlink()
        ours_down, boto_down, boto_down_tuned = (statistics.median(took[n]) for n in downloads)
        row("nixrepro download", ours_down, mb(ours_down))
        row("boto3 download_file, default", boto_down, mb(boto_down))
        row("boto3 download_file, 16 threads 64 MiB", boto_down_tuned, mb(boto_down_tuned))
        print(f"  ratio vs boto3 default: {boto_down / ours_down:.2f}x  (target >= 1.4x)")


if __name__ == "__main__":
    main()
