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

import _common  # noqa: F401 - puts the project on sys.path

from nixrepro.config import DataConfig
from nixrepro.datacache import sha256_file
from nixrepro.dataops import Data
from nixrepro.datastore import DataURI
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
    args = parser.parse_args()
    big_size = (256 if args.quick else 2048) * 1024 * 1024
    count = 2_000 if args.quick else 20_000
    dvc = os.environ.get("DVC_BIN") or shutil.which("dvc")

    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "s3").mkdir()
        server = S3Server(tmp / "s3")
        server.start()
        env = {**os.environ, **server.env(), "XDG_CACHE_HOME": str(tmp / "xdg")}
        os.environ.update(server.env())
        client = server.client()
        try:
            big = tmp / "big.bin"
            make_big(big, big_size)
            gib = big_size / 2**30
            print(f"hashing a {gib:g} GiB file (median of {args.repeat})")
            ours = median_time(lambda: sha256_file(big), args.repeat)
            openssl_argv = ["openssl", "dgst", "-sha256", str(big)]
            openssl = median_time(lambda: run(openssl_argv, tmp, env), args.repeat)
            coreutils = median_time(lambda: run(["sha256sum", str(big)], tmp, env), 1)
            row("nixrepro sha256", ours, f"{big_size / ours / 1e9:.2f} GB/s")
            row("openssl dgst -sha256", openssl, f"{big_size / openssl / 1e9:.2f} GB/s")
            row("sha256sum", coreutils, f"{big_size / coreutils / 1e9:.2f} GB/s")
            print(f"  throughput ratio vs openssl: {openssl / ours:.2f}x  (target >= 0.95x)")

            many = tmp / "many"
            make_many(many, count)
            bucket = server.new_bucket()
            print(f"\n{count:,} small files, first put (once each)")
            data = Data(DataConfig(cache_dir=str(tmp / "cache")))
            start = time.perf_counter()
            data.put(many, f"s3://{bucket}/many")
            ours_first = time.perf_counter() - start
            files = sorted(p for p in many.rglob("*") if p.is_file())
            sequential_bucket = server.new_bucket()
            start = time.perf_counter()
            for path in files:
                client.put_object(Bucket=sequential_bucket, Key=str(path.relative_to(many)),
                                  Body=path.read_bytes())
            sequential = time.perf_counter() - start
            row("nixrepro data put (library)", ours_first, f"{count / ours_first:,.0f} files/s")
            row("boto3 put_object, sequential", sequential, f"{count / sequential:,.0f} files/s")
            print(f"  ratio: {sequential / ours_first:.2f}x faster  (target >= 1.3x)")

            print(f"\nre-putting the unchanged {count:,}-file directory (median of {args.repeat})")
            nixrepro = [sys.executable, "-m", "nixrepro", "data", "put", str(many), f"s3://{bucket}/many"]
            cache_env = {**env, "XDG_CACHE_HOME": str(tmp / "xdg")}
            run(nixrepro, tmp, cache_env)  # the CLI's own cache learns the stats once
            reput = median_time(lambda: run(nixrepro, tmp, cache_env), args.repeat)
            row("nixrepro data put (CLI, end to end)", reput, "target < 0.5 s")
            if dvc:
                repo = tmp / "dvcrepo"
                repo.mkdir()
                shutil.copytree(many, repo / "many")
                run(["git", "init", "-q"], repo, env)
                run([dvc, "init", "-q"], repo, env)
                run([dvc, "config", "core.analytics", "false"], repo, env)
                run([dvc, "add", "many"], repo, env)
                status = median_time(lambda: run([dvc, "status"], repo, env), args.repeat)
                row("dvc status", status)
                print(f"  ratio: {status / reput:.2f}x faster than dvc status  (target >= 4x)")
                remote = server.new_bucket()
                run([dvc, "remote", "add", "-d", "bench", f"s3://{remote}/dvc"], repo, env)
                run([dvc, "remote", "modify", "bench", "endpointurl", server.endpoint_url], repo, env)
                start = time.perf_counter()
                pushed = subprocess.run([dvc, "push"], cwd=repo, env=env, capture_output=True)
                push = time.perf_counter() - start
                if pushed.returncode == 0:
                    row("dvc push (first)", push, f"{count / push:,.0f} files/s")
                    print(f"  first put vs dvc push: {push / ours_first:.2f}x faster  (target > 1x)")
                else:
                    print("  dvc push: skipped (this dvc has no S3 support: pip install dvc-s3)")
            else:
                print("  dvc: skipped (set DVC_BIN or put dvc on PATH)")

            print(f"\na {gib:g} GiB upload and download")
            from boto3.s3.transfer import TransferConfig

            uri = DataURI.parse(f"s3://{bucket}/big.bin")
            store = data.store(uri)
            sha = sha256_file(big)
            start = time.perf_counter()
            version = store.put_file(uri, big, sha)
            ours_up = time.perf_counter() - start
            tuned = TransferConfig(max_concurrency=16, multipart_chunksize=64 * 2**20)
            start = time.perf_counter()
            client.upload_file(str(big), bucket, "big-default.bin")
            boto_up = time.perf_counter() - start
            start = time.perf_counter()
            client.upload_file(str(big), bucket, "big-tuned.bin", Config=tuned)
            boto_up_tuned = time.perf_counter() - start
            best_up = min(boto_up, boto_up_tuned)
            row("nixrepro upload", ours_up, f"{big_size / ours_up / 1e6:.0f} MB/s")
            row("boto3 upload_file, default", boto_up, f"{big_size / boto_up / 1e6:.0f} MB/s")
            row("boto3 upload_file, 16 threads 64 MiB", boto_up_tuned,
                f"{big_size / boto_up_tuned / 1e6:.0f} MB/s")
            print(f"  ratio vs the best boto3 setting: {best_up / ours_up:.2f}x  (target >= 0.95x)")

            target = tmp / "down.bin"
            start = time.perf_counter()
            store.download(uri, version.version_id, target)
            ours_down = time.perf_counter() - start
            target.unlink()
            start = time.perf_counter()
            client.download_file(bucket, "big-default.bin", str(target))
            boto_down = time.perf_counter() - start
            target.unlink()
            start = time.perf_counter()
            client.download_file(bucket, "big-default.bin", str(target), Config=tuned)
            boto_down_tuned = time.perf_counter() - start
            row("nixrepro download", ours_down, f"{big_size / ours_down / 1e6:.0f} MB/s")
            row("boto3 download_file, default", boto_down, f"{big_size / boto_down / 1e6:.0f} MB/s")
            row("boto3 download_file, 16 threads 64 MiB", boto_down_tuned,
                f"{big_size / boto_down_tuned / 1e6:.0f} MB/s")
            print(f"  ratio vs boto3 default: {boto_down / ours_down:.2f}x  (target >= 1.4x)")
        finally:
            server.stop()



if __name__ == "__main__":
    main()
