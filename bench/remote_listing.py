"""Listing a remote run store: ``nixrepro runs --remote`` against a plain ListObjectsV2 of the
same number of keys, on a real SeaweedFS on loopback (as the tests use).

For each size (100, 1,000, 10,000 runs) a bucket prefix is laid out as that many pushes leave it
(nixrepro.remote.store): full index pages, one page that is not full and COMPACT_AT / 2 loose
entries (compaction keeps them under COMPACT_AT), each entry a realistic run (params, metrics,
tags, host); the baseline is the same number of one-object-per-run keys under another prefix,
listed with a paginated ListObjectsV2 and not even read. Printed: medians of the library listing
(``RemoteRunStore.summaries``, in-process, the client made), of ``nixrepro runs --remote --json``
and of ``nixrepro runs --remote`` end to end (a fresh process: imports, the client, the listing,
the output), each with its ratio to the plain LIST; the output step alone (the JSON or the table
of the listed runs, in-process); and what the command costs on a store with no run (its fixed
part).

    .venv/bin/python bench/remote_listing.py             # 100, 1,000 and 10,000 runs (~2 minutes)
    .venv/bin/python bench/remote_listing.py --runs 1000
Target (issue 15): 10,000 runs listed in under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, compile_bytecode  # (importing _common also puts the project on sys.path)

from nixrepro.config import DataConfig
from nixrepro.record import RunRecord
from nixrepro.remote import RemoteURL, index, open_objects
from nixrepro.remote.index import listing_entry
from nixrepro.remote.store import RemoteRunStore
from tests.s3server import S3Server

FIXTURE = ROOT / "tests" / "fixtures" / "record-minimal.json"
# entries not yet compacted: compaction keeps them under COMPACT_AT, so on average half of it
LOOSE = index.COMPACT_AT // 2


def median_time(action: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def entries(count: int) -> list[dict[str, object]]:
    """``count`` listing entries of distinct, realistic runs (each through RunRecord.to_dict, as
    a push writes them)."""
    base = RunRecord.from_dict(json.loads(FIXTURE.read_text()))
    made = []
    for i in range(count):
        record = base.replace(
            id=f"{i:024x}", name=f"sweep-{i % 50}", tags=["sweep", f"lr-{i % 7}"],
            started_at=f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00+00:00",
            params={"lr": 0.001 * (1 + i % 7), "batch": 32 * (1 + i % 4), "epochs": 10, "model": "resnet"},
            metrics={"loss": 1 / (1 + i), "acc": (i % 100) / 100, "val_loss": 1.5 / (1 + i),
                     "val_acc": (i % 97) / 100, "step": 1000 + i},
            seed=i, duration_s=12.5 + i % 300)
        made.append(listing_entry(record.to_dict()))
    return made


def lay_out(s3: S3Server, bucket: str, prefix: str, count: int) -> None:
    """The remote as ``count`` pushes leave it, and ``count`` plain keys beside it."""
    url = RemoteURL.parse(f"s3://{bucket}/{prefix}")
    remote = RemoteRunStore(open_objects(url, DataConfig(endpoint_url=s3.endpoint_url)))
    remote.is_run_store(create=True)
    made = entries(count)
    compacted, loose = made[:-LOOSE] if count > LOOSE else [], made[-LOOSE:]
    remote.write_pages(compacted)
    client = s3.client()

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    objects = [(f"{prefix}/{index.INDEX}{e['id']}.json", json.dumps(e).encode()) for e in loose]
    objects += [(f"baseline-{prefix}/index/{e['id']}.json", json.dumps(e).encode()) for e in made]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, objects))


def plain_list(client: object, bucket: str, prefix: str) -> int:
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):  # type: ignore[attr-defined]
        count += len(page.get("Contents", []))
    return count


def command(project: Path, *args: str, count: int | None = None) -> Callable[[], None]:
    """``nixrepro runs --remote ARGS`` in a fresh process, as a user types it."""
    def run() -> None:
        out = subprocess.run([sys.executable, "-m", "nixrepro", "runs", "--remote", *args],
                             cwd=project, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"nixrepro runs --remote failed: {out.stderr.strip()}")
        if count is not None:
            assert len(json.loads(out.stdout)) == count

    return run


def measure(s3: S3Server, bucket: str, project: Path, count: int, repeat: int) -> str:
    """One row: the remote laid out for ``count`` runs, each listing's median and ratio."""
    prefix = f"team-{count}"
    started = time.perf_counter()
    lay_out(s3, bucket, prefix, count)
    setup = time.perf_counter() - started
    (project / "nixrepro.toml").write_text(f'[runs]\nremote = "s3://{bucket}/{prefix}"\n')
    objects = open_objects(RemoteURL.parse(f"s3://{bucket}/{prefix}"), DataConfig())
    client = objects.client  # type: ignore[attr-defined]
    assert plain_list(client, bucket, f"baseline-{prefix}/") == count

    def library() -> None:  # the client made once, as a command makes it
        assert len(RemoteRunStore(objects).summaries()) == count

    listed = RemoteRunStore(objects).summaries()
    base = median_time(lambda: plain_list(client, bucket, f"baseline-{prefix}/"), repeat)
    lib = median_time(library, repeat)
    as_json = median_time(command(project, "--json", count=count), repeat)
    table = median_time(command(project), repeat)
    out_json, out_table = median_time(lambda: json_output(listed), repeat), \
        median_time(lambda: table_output(listed), repeat)
    return (f"{count:>6} {base:>10.3f}s {lib:>7.3f}s {lib / base:>6.2f}x "
            f"{as_json:>12.3f}s {as_json / base:>6.2f}x {table:>9.3f}s {table / base:>6.2f}x"
            f" {out_json:>9.3f}s {out_table:>6.3f}s   (set up in {setup:.0f}s)")


def json_output(records: list[RunRecord]) -> str:
    """What ``runs --json`` makes of the listed runs (in-process: the output step alone)."""
    from nixrepro.cli import json_text
    from nixrepro.cli.run import _summary_dict

    return json_text([_summary_dict(r) for r in records])


def table_output(records: list[RunRecord]) -> str:
    """What ``runs`` makes of them: the columns that vary, then the table."""
    from nixrepro.table import Columns, render_text

    columns, _ = Columns(records).default(records)
    return render_text(records, columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, action="append", help="remote runs (repeatable)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    compile_bytecode()
    with tempfile.TemporaryDirectory() as tmp:
        s3 = S3Server(Path(tmp) / "s3")
        s3.directory.mkdir()
        s3.start()
        try:
            os.environ.update(s3.env())
            bucket = s3.new_bucket()
            project = Path(tmp) / "project"
            project.mkdir()
            subprocess.run(["git", "init", "-q"], cwd=project, check=True)
            # what every `runs --remote` pays before it lists anything (the interpreter, click,
            # botocore and its client, the marker): the same command on a store with no run
            (project / "nixrepro.toml").write_text(f'[runs]\nremote = "s3://{bucket}/empty"\n')
            empty = RemoteURL.parse(f"s3://{bucket}/empty")
            RemoteRunStore(open_objects(empty, DataConfig())).is_run_store(create=True)
            floor = median_time(command(project, "--json", count=0), args.repeat)
            print(f"runs --remote --json of a store with no run (start-up, botocore, the marker): "
                  f"{floor:.3f}s")
            print(f"{'runs':>6} {'plain LIST':>11} {'library':>16} {'runs --remote --json':>22} "
                  f"{'runs --remote':>18} {'output: json':>13} {'table':>7}")
            for count in args.runs or [100, 1000, 10000]:
                print(measure(s3, bucket, project, count, args.repeat), flush=True)
        finally:
            s3.stop()
    print("ratio: time / plain ListObjectsV2 of as many keys (< 1: faster than listing the keys alone); "
          "output: what the command spends writing the listed runs as JSON or as the table (in-process)")


if __name__ == "__main__":
    main()
