"""How `runs`, `show @latest`, `diff`, `lineage` and `pipeline status` grow with the run store.

A project with a two-stage data pipeline (file:// data) and a plain run is recorded for real; the
store is then filled to 100, 1,000 and 10,000 runs with copies of those records (new ids, older
start times, other params, metrics and output versions), saved through RunStore.save as a run's
end saves them. Each command is run through the CLI, interleaved round by round with two floors
measured in the same run: `python -c pass` (the interpreter), a Python process that lists the run
directories and stats every record.json (what any listing that notices an edited record must at
least do), one that also reads, checks and parses the listing index (what a listing of every
run's summary costs before a record is built) and one that then prints each run's cells, aligned,
straight from the parsed rows (the least `runs` does with them, without a CLI). Target (issue
#16): each command <= 0.3 s at 10,000 runs.

    .venv/bin/python bench/store_scale.py [--sizes 100,1000,10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import offline_nix, timed_together

from nixrepro.record import DataVersion, RunRecord
from nixrepro.runstore import RunStore
from tests.helpers import git_commit, make_project

TOML = """\
[run]
flake = ".#env"

[data]
cache_dir = "{cache}"

[stages.prepare]
cmd = ["sh", "-c", "mkdir -p out && echo clean > out/clean.txt"]
outputs = ["out/clean.txt={base}/clean.txt"]

[stages.train]
cmd = ["sh", "-c", "mkdir -p out && echo model > out/model.txt"]
inputs = ["{base}/clean.txt"]
outputs = ["out/model.txt={base}/model.txt"]
"""
# and what the listing index costs before anything is built from it: read, check, parse
INDEX_FLOOR = (
    "import hashlib, json, os, sys\n"
    "runs, index = sys.argv[1], sys.argv[2]\n"
    "for entry in os.scandir(runs):\n"
    "    try:\n"
    "        os.stat(f'{runs}/{entry.name}/record.json')\n"
    "    except FileNotFoundError:\n"
    "        pass\n"
    "head, _, rest = open(index, 'rb').read().partition(b'\\n')\n"
    "hashlib.sha256(rest).hexdigest()\n"
    "[json.loads(line) for line in rest.split(b'\\n')]\n"
)
# and the least `runs` itself does with it: the index's rows made into cells (id, status, start,
# duration, commit, name, the params and metrics, the command) and printed, aligned, one line each
TABLE_FLOOR = INDEX_FLOOR.replace("[json.loads(line) for line in rest.split(b'\\n')]\n", "") + (
    "lines = rest.split(b'\\n')\n"
    "meta, refs = json.loads(lines[1]), json.loads(lines[2])\n"
    "shared = {name: json.loads(lines[3 + at]) for at, name in enumerate(meta['shared'])}\n"
    "code, command = meta['shared'].index('code'), meta['shared'].index('command')\n"
    "rows = json.loads(b'[' + b','.join(lines[3 + len(shared):]) + b']')\n"
    "names = meta['names']\n"
    "at = {name: names.index(name) for name in ('id', 'status', 'started_at', 'duration_s', "
    "'name', 'params', 'metrics')}\n"
    "cells = []\n"
    "for row, ref in zip(rows, refs):\n"
    "    started, params, metrics = row[at['started_at']], row[at['params']], row[at['metrics']]\n"
    "    cells.append((row[at['id']][:8], row[at['status']], started[:10] + ' ' + started[11:19],\n"
    "                  f\"{row[at['duration_s']]:.1f}s\", shared['code'][ref[code]]['commit'][:8],\n"
    "                  row[at['name']] or '', *(str(v) for v in params.values()),\n"
    "                  *(str(v) for v in metrics.values()),\n"
    "                  ' '.join(shared['command'][ref[command]]['argv'])))\n"
    "width = max(map(len, cells))\n"
    "cells = [c + ('-',) * (width - len(c)) for c in cells]\n"
    "widths = [max(map(len, column)) for column in zip(*cells)]\n"
    "line = '  '.join(f'{{:<{w}}}' for w in widths)\n"
    "sys.stdout.write('\\n'.join(line.format(*c).rstrip() for c in cells) + '\\n')\n"
)
STAT_FLOOR = (
    "import os, sys\n"
    "runs = sys.argv[1]\n"
    "for entry in os.scandir(runs):\n"
    "    try:\n"
    "        os.stat(f'{runs}/{entry.name}/record.json')\n"
    "    except FileNotFoundError:\n"
    "        pass\n"
)


def record(root: Path) -> list[RunRecord]:
    """The project's real runs: a pipeline of two stages and one plain run with params."""
    nixrepro = [sys.executable, "-m", "nixrepro"]
    for argv in (["pipeline", "run"], ["run", "-p", "lr=0.1", "--", "true"]):
        subprocess.run([*nixrepro, *argv], cwd=root, check=True, capture_output=True)
    store = RunStore.for_repo(root)
    return sorted(store.records(), key=lambda r: r.started_at)


def fill(store: RunStore, templates: list[RunRecord], have: int, want: int) -> None:
    """Copies of the templates until the store holds ``want`` runs, each older than the last."""
    for i in range(have, want):
        template = templates[i % len(templates)]
        run_id = secrets.token_hex(12)
        store.run_dir(run_id).mkdir(parents=True)
        outputs = [DataVersion(v.uri, f"copy-{i:06d}", v.sha256, v.size) for v in template.data.outputs]
        copy = template.replace(
            id=run_id,
            started_at=f"2020-01-01T00:00:00.{999999 - i:06d}+00:00",
            params={**template.params, "lr": round(0.001 * (i + 1), 6)},
            metrics={"loss": round(1.0 / (i + 2), 6), "step": i},
            data=template.data.__class__(template.data.inputs, outputs, template.data.output_results),
            files={},
        )
        store.save(copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build the project in DIR and keep it (to profile a command on it)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    offline_nix()
    if args.keep:
        args.keep.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="nixrepro-bench-store-", dir=args.keep) as scratch:
        tmp = str(args.keep or scratch)
        base = Path(tmp) / "data"
        base.mkdir()
        project = make_project(Path(tmp), label="benchstore")
        (project.root / "nixrepro.toml").write_text(TOML.format(cache=Path(tmp) / "cache",
                                                               base=f"file://{base}"))
        (project.root / ".gitignore").write_text("out/\n")
        git_commit(project.root, "pipeline")
        env = {**os.environ, "XDG_CONFIG_HOME": str(Path(tmp) / "config")}  # no signing key
        os.environ.update(env)
        templates = record(project.root)
        store = RunStore.for_repo(project.root)
        model = f"file://{base}/model.txt"
        nixrepro = str(Path(sys.executable).parent / "nixrepro")  # the console script users run
        commands = {
            "runs": [nixrepro, "runs"],
            "show @latest": [nixrepro, "show", "@latest"],
            "diff": [nixrepro, "diff", "@latest~1", "@latest"],
            "lineage": [nixrepro, "lineage", model],
            "pipeline status": [nixrepro, "pipeline", "status"],
            "floor: python": [sys.executable, "-c", "pass"],
            "floor: stat all": [sys.executable, "-c", STAT_FLOOR, str(store.runs_dir)],
            "floor: + index": [sys.executable, "-c", INDEX_FLOOR, str(store.runs_dir),
                               str(store.root / "summaries.json")],
            "floor: + table": [sys.executable, "-c", TABLE_FLOOR, str(store.runs_dir),
                               str(store.root / "summaries.json")],
        }
        results: dict[int, dict[str, float]] = {}
        have = len(templates)
        for size in sizes:
            fill(store, templates, have, size)
            have = size
            for argv in commands.values():  # warm: the first listing after the fill (re)builds
                subprocess.run(argv, cwd=project.root, capture_output=True, check=True)
            results[size] = timed_together(commands, project.root, args.repeat)
        print(f"run store scale, median of {args.repeat} (seconds); target <= 0.300 s at 10,000 runs")
        print(f"{'command':<18}" + "".join(f"{size:>10,}" for size in sizes) + "   growth  vs stat floor")
        for name in commands:
            row = [results[size][name] for size in sizes]
            growth = row[-1] / row[0]
            floor = results[sizes[-1]]["floor: stat all"]
            print(f"{name:<18}" + "".join(f"{value:>10.3f}" for value in row)
                  + f"   {growth:5.1f}x  {row[-1] / floor:5.2f}x")
        print(json.dumps({"sizes": sizes, "seconds": results}), file=sys.stderr)


if __name__ == "__main__":
    main()
