"""Adversarial: secrets planted in every channel a run has, bad numbers, a W&B run with a file://
output. Real runs (real git, the real Nix store, the real wandb offline), each test named after
the promise it checks."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nixrepro import record as record_module
from nixrepro.redact import REDACTED, Redactor
from nixrepro.runner import parse_param
from tests import wandb_log
from tests.helpers import Project, git_commit, make_project

pytestmark = pytest.mark.nix


def strict(text: str | bytes) -> Any:
    """json.loads as jq reads JSON: NaN and Infinity are refused."""

    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def wandb_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "WANDB_SILENT": "true", **extra}


# --- one run with a secret in every channel --------------------------------------------------------

# channel -> the secret planted there; each is distinctive, so a grep finds any copy of it
SECRETS = {
    "environment variable, copied into --name": "EnvTok3n_aa11bb22",
    "URL credentials in --tag": "TagUrlPw_mm33",
    "secret-named param": "ParamSecret_cc33",
    "URL credentials in a param": "ParamUrlPw_dd44",
    "--token=VALUE": "FlagEqSecret_ee55",
    "--api-key VALUE": "FlagSpaceSecret_ff66",
    "DB_PASSWORD=VALUE argument": "AssignSecret_gg77",
    "user:password@ in an argument": "UrlPassword_hh88",
    "?access_token= in an argument": "UrlQuery_ii99",
    "URL credentials in an environment value": "DbUrlPw_jj00",
    "URL credentials the program prints": "LogUrlPw_kk11",
    "?password= the program prints": "LogQuery_ll22",
    "secret in a file of the dev patch": "PatchSecret_nn44",
}
S = SECRETS

TRAIN = f"""\
import os, sys
import nixrepro
print("hub token", os.environ["HF_TOKEN"])
print("db", os.environ["DATABASE_URL"], "password alone:", "{S['URL credentials in an environment value']}")
print("clone https://carol:{S['URL credentials the program prints']}@git.example/r.git done")
print("callback https://h/cb?password={S['?password= the program prints']}&x=1", file=sys.stderr)
print("api key from argv", sys.argv[sys.argv.index("--api-key") + 1], file=sys.stderr)
print("params", nixrepro.params())
nixrepro.log({{"loss": 0.5}}, step=1)
open("model.txt", "w").write("weights")
"""


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A dev run with W&B offline and a file:// output, with every secret of SECRETS planted."""
    base = tmp_path_factory.mktemp("secrets")
    project = make_project(base, label=f"sec-{base.name[-10:]}")
    env_path = project.build_env()
    (project.root / "nixrepro.toml").write_text(
        '[tracker]\nkind = "wandb"\nproject = "secrets"\nmode = "offline"\n')
    (project.root / "train.py").write_text(TRAIN)
    (project.root / ".gitignore").write_text("model.txt\n")
    git_commit(project.root, "train")
    (project.root / "notes.txt").write_text(f"token: {S['secret in a file of the dev patch']}\n")
    env = wandb_env(
        HF_TOKEN=S["environment variable, copied into --name"],
        NOTES_SECRET=S["secret in a file of the dev patch"],
        DATABASE_URL=f"postgres://app:{S['URL credentials in an environment value']}@db/prod",
    )
    store = base / "store"
    result = project.nixrepro(
        "run", "--env", env_path, "--dev",
        "--name", f"sweep {S['environment variable, copied into --name']}",
        "--tag", f"https://t:{S['URL credentials in --tag']}@h/x", "--tag", "baseline",
        "-p", f"api_key={S['secret-named param']}", "-p", "lr=0.5", "-p", "max_tokens=512",
        "-p", "tokenizer=gpt2", "-p", f"db=postgres://u:{S['URL credentials in a param']}@h/db",
        "--output", f"model.txt=file://{store}/model.txt",
        "--", sys.executable, "train.py",
        f"--token={S['--token=VALUE']}", "--api-key", S["--api-key VALUE"],
        f"DB_PASSWORD={S['DB_PASSWORD=VALUE argument']}",
        f"https://bob:{S['user:password@ in an argument']}@git.example/x",
        f"https://h/x?access_token={S['?access_token= in an argument']}", "--max-tokens", "512",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = project.runs_dir.iterdir()
    (wandb_dir,) = (project.root / ".nixrepro" / "wandb").glob("offline-run-*")
    return {"project": project, "result": result, "run_dir": run_dir, "wandb_dir": wandb_dir,
            "record": strict((run_dir / "record.json").read_text())}


def written_files(project: Project) -> list[Path]:
    """Every file nixrepro and wandb wrote for the run: the run store, W&B's runs, cache, logs."""
    return [p for p in (project.root / ".nixrepro").rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.parametrize("channel", list(SECRETS))
def test_a_planted_secret_never_reaches_a_file_nixrepro_or_wandb_writes(
    secret_run: dict[str, Any], channel: str,
) -> None:
    secret = SECRETS[channel].encode()
    files = written_files(secret_run["project"])
    assert len(files) > 10  # record, summary, logs, metrics, patch, W&B's run, its logs...
    leaked = [str(p) for p in files if secret in p.read_bytes()]
    assert not leaked, f"{channel}: {secret!r} is in {leaked}"
    # nixrepro's own messages (not the program's output, which the terminal shows unchanged)
    own = [line for line in secret_run["result"].stderr.splitlines() if line.startswith("nixrepro:")]
    assert not [line for line in own if SECRETS[channel] in line]


def test_the_record_redacts_secrets_where_they_stood_and_keeps_everything_else(
    secret_run: dict[str, Any],
) -> None:
    record = secret_run["record"]
    argv = record["command"]["argv"]
    assert argv[1:] == [
        "train.py", f"--token={REDACTED}", "--api-key", REDACTED, f"DB_PASSWORD={REDACTED}",
        f"https://{REDACTED}@git.example/x", f"https://h/x?access_token={REDACTED}",
        "--max-tokens", "512",
    ]
    assert record["params"] == {"api_key": REDACTED, "lr": 0.5, "max_tokens": 512,
                                "tokenizer": "gpt2", "db": f"postgres://{REDACTED}@h/db"}
    assert record["name"] == f"sweep {REDACTED}"
    assert record["tags"] == [f"https://{REDACTED}@h/x", "baseline"]
    assert record["env_vars"]["DATABASE_URL"] == f"postgres://{REDACTED}@db/prod"
    assert record["env_vars"]["HF_TOKEN"] == REDACTED


def test_the_logs_keep_the_output_with_only_the_secrets_replaced(secret_run: dict[str, Any]) -> None:
    run_dir = secret_run["run_dir"]
    out = (run_dir / "stdout.log").read_text()
    err = (run_dir / "stderr.log").read_text()
    assert f"hub token {REDACTED}\n" in out
    assert f"db postgres://{REDACTED}@db/prod password alone: {REDACTED}\n" in out
    assert f"clone https://{REDACTED}@git.example/r.git done\n" in out
    assert f"callback https://h/cb?password={REDACTED}&x=1\n" in err
    assert f"api key from argv {REDACTED}\n" in err
    # the child itself got the real values: only what nixrepro keeps is scrubbed
    assert "'api_key': '" + S["secret-named param"] + "'" in secret_run["result"].stdout


def test_wandb_is_handed_the_scrubbed_command_never_nixrepros_own_argv(
    secret_run: dict[str, Any],
) -> None:
    (log,) = secret_run["wandb_dir"].glob("run-*.wandb")
    data = log.read_bytes()
    assert b"train.py" in data
    for flag in (b"--name", b"--tag", b"--output", b"-m nixrepro"):
        assert flag not in data, f"nixrepro's own command line ({flag!r}) is in W&B's file"
    run = wandb_log.read(secret_run["wandb_dir"])
    assert run.config["api_key"] == REDACTED
    assert REDACTED in run.config["nixrepro"]["command"]


def test_a_wandb_run_with_a_file_output_keeps_its_sink(secret_run: dict[str, Any]) -> None:
    result, record = secret_run["result"], secret_run["record"]
    assert "dropped" not in result.stderr, result.stderr
    assert record["trackers"]["wandb"]["run_id"] == record["id"]
    (output,) = record["data"]["outputs"]
    assert output["uri"].startswith("file://") and output["version_id"]
    run = wandb_log.read(secret_run["wandb_dir"])
    assert run.exit_code == 0
    assert {"record.json", "stdout.log", "stderr.log"} <= set(run.files)
    assert run.summary["nixrepro"]["status"] == "succeeded"
    assert any(a.type == "dataset" for a in run.artifacts)
    (entry,) = run.artifacts[0].manifest.contents
    assert entry.ref == f"{output['uri']}?versionId={output['version_id']}"
    assert entry.digest == output["sha256"]


def test_a_dev_run_whose_patch_was_scrubbed_still_verifies(secret_run: dict[str, Any]) -> None:
    project, run_dir, record = secret_run["project"], secret_run["run_dir"], secret_run["record"]
    patch = (run_dir / "code.patch").read_bytes()
    assert f"token: {REDACTED}".encode() in patch
    verified = project.nixrepro("verify", record["id"], "--json")
    checks = {c["name"]: c["result"] for c in strict(verified.stdout)["checks"]}
    assert checks["dev patch"] == "pass", verified.stdout
    assert verified.returncode == 0, verified.stdout


# --- the log writer holds back only what could still be a secret ---------------------------------

LONG_KEY = "".join(random.Random(4000).choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") for _ in range(4000))

STREAMER = """\
import os, sys, time
print("first line", flush=True)
print("the key", os.environ["BIG_API_KEY"], "end", flush=True)
open("started", "w").write(str(os.getpid()))
time.sleep(60)
"""


def test_a_4000_character_key_does_not_keep_the_log_empty_and_survives_kill_9(
    project: Project,
) -> None:
    (project.root / "stream.py").write_text(STREAMER)
    (project.root / ".gitignore").write_text("started\n")
    git_commit(project.root, "streamer")
    env = {**os.environ, "BIG_API_KEY": LONG_KEY}
    recorder = subprocess.Popen(
        [sys.executable, "-m", "nixrepro", "run", "--env", project.build_env(), "--",
         sys.executable, "stream.py"],
        cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = project.root / "started"
    try:
        deadline = time.monotonic() + 60
        while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        (run_dir,) = project.runs_dir.iterdir()
        log = run_dir / "stdout.log"
        expected = f"first line\nthe key {REDACTED} end\n"
        while log.read_text() != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text() == expected  # while the run goes on, not only at its end
        recorder.send_signal(signal.SIGKILL)
        recorder.wait(30)
        assert log.read_text() == expected
    finally:
        if recorder.poll() is None:
            recorder.kill()
        if started.exists() and started.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.read_text()), signal.SIGKILL)


def test_the_writer_holds_back_only_a_suffix_that_could_begin_a_secret() -> None:
    sink = io.BytesIO()
    writer = Redactor.from_env({"BIG_API_KEY": LONG_KEY}).writer(sink)
    writer.write(b"loss 0.5\n")
    assert sink.getvalue() == b"loss 0.5\n"
    writer.write(b"key " + LONG_KEY[:3000].encode())
    assert sink.getvalue() == b"loss 0.5\nkey "  # those 3,000 characters could be the key
    writer.write(LONG_KEY[3000:].encode() + b" ok\n")
    assert sink.getvalue() == f"loss 0.5\nkey {REDACTED} ok\n".encode()
    writer.write(LONG_KEY[:10].encode() + b"!\n")  # not the key after all: written at once
    assert sink.getvalue().endswith(LONG_KEY[:10].encode() + b"!\n")


URL_LOG = (
    b"epoch 1 https://ann:pw_secret1@h/repo ok\n"
    b"GET https://h/api?a=1&access_token=tok_secret2#frag 200\n"
    b"next https://h/cb?next=https://h2/x?token=tok_secret3 done\n"
    b"ssh://git@host:22/x https://example.com:8443/p?ref=main plain text\n"
)


def test_url_credentials_split_across_any_chunks_never_reach_the_log() -> None:
    redactor = Redactor.from_env({})
    whole = redactor.scrub_bytes(URL_LOG)
    assert whole == redactor.scrub(URL_LOG.decode()).encode()
    for secret in (b"pw_secret1", b"tok_secret2", b"tok_secret3"):
        assert secret not in whole
    assert b"ssh://git@host:22/x https://example.com:8443/p?ref=main plain text\n" in whole
    rng = random.Random(13)
    for _ in range(300):
        sink, writer, i = io.BytesIO(), redactor.writer(io.BytesIO()), 0
        writer = redactor.writer(sink)
        while i < len(URL_LOG):
            size = rng.randint(1, 9)
            writer.write(URL_LOG[i:i + size])
            i += size
        writer.close()
        assert sink.getvalue() == whole


@pytest.mark.parametrize(
    ("argv", "recorded"),
    [
        (["--hf-token", "abcdefgh"], ["--hf-token", REDACTED]),
        (["--dbPassword=hunter22"], [f"--dbPassword={REDACTED}"]),
        (["+db.password=hunter22"], [f"+db.password={REDACTED}"]),
        (["--api-key", "--verbose"], ["--api-key", "--verbose"]),  # a flag, not its value
        (["--key-dim", "64", "--max-tokens", "512", "--tokenizer", "gpt2"],
         ["--key-dim", "64", "--max-tokens", "512", "--tokenizer", "gpt2"]),
    ],
)
def test_a_secret_named_flag_hides_its_value_and_hyperparameters_stay(
    argv: list[str], recorded: list[str],
) -> None:
    assert Redactor.from_env({}).argv(argv) == recorded


# --- records are strict JSON ----------------------------------------------------------------------

PARAMS_DUMP = """\
import json, os
open("params.json", "w").write(os.environ["NIXREPRO_PARAMS"])
with open(os.path.join(os.environ["NIXREPRO_RUN_DIR"], "metrics.jsonl"), "a") as f:
    f.write('{"time": 1.0, "step": 1, "metrics": {"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e999}}\\n')
"""

TYPED = {"nan": "nan", "inf": "inf", "ninf": "-inf", "huge": "1e999", "zeros": "007",
         "sep": "1_000", "space": " 5", "half": 0.5, "dot": 0.5, "int": 10, "exp": 1000.0,
         "neg": -3, "yes": True}
RAW = {"nan": "nan", "inf": "inf", "ninf": "-inf", "huge": "1e999", "zeros": "007",
       "sep": "1_000", "space": " 5", "half": "0.5", "dot": ".5", "int": "10", "exp": "1e3",
       "neg": "-3", "yes": "True"}


def test_nan_inf_and_odd_numbers_in_params_and_metrics_give_a_strict_json_record(
    project: Project,
) -> None:
    (project.root / "dump.py").write_text(PARAMS_DUMP)
    (project.root / ".gitignore").write_text("params.json\n")
    git_commit(project.root, "dump")
    args = [a for key, raw in RAW.items() for a in ("-p", f"{key}={raw}")]
    result = project.nixrepro("run", "--env", project.build_env(), *args, "--",
                              sys.executable, "dump.py")
    assert result.returncode == 0, result.stderr
    (run_dir,) = project.runs_dir.iterdir()
    summary = strict((run_dir / "summary.json").read_text())
    for doc in (strict((run_dir / "record.json").read_text()), summary.get("summary", summary)):
        assert doc["params"] == TYPED
        assert doc["metrics"] == {"a": "nan", "b": "inf", "c": "-inf", "d": "inf"}
    assert strict((project.root / "params.json").read_text()) == TYPED  # what the command got
    assert project.nixrepro("verify", "@latest").returncode == 0


@pytest.mark.parametrize(("raw", "typed"), list(zip(RAW.values(), TYPED.values(), strict=True)))
def test_a_param_is_typed_as_json_reads_numbers(raw: str, typed: object) -> None:
    key, value = parse_param(f"x={raw}")
    assert (key, value, type(value)) == ("x", typed, type(typed))


def test_a_record_document_holding_nan_is_written_strict_and_hashes_as_written() -> None:
    doc = {"metrics": {"loss": float("nan"), "up": float("inf")}, "params": {"x": [float("-inf")]}}
    text = record_module.document_json(doc)
    assert strict(text) == {"metrics": {"loss": "nan", "up": "inf"}, "params": {"x": ["-inf"]}}
    assert record_module.record_sha256(doc) == record_module.record_sha256(strict(text))


def test_an_error_quoting_a_url_with_a_token_never_prints_the_token(tmp_path: Path) -> None:
    """The CLI's last guard: any error that quotes a URL with credentials (git's, nix's) is scrubbed."""
    script = ("import click; from nixrepro import cli; from nixrepro.errors import NixreproError\n"
              "def boom(): raise NixreproError('fetching https://u:tok-SECRET-123@host/x failed; retry.')\n"
              "cli.cli.add_command(click.command('boom')(boom)); cli.main(['boom'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "tok-SECRET-123" not in done.stderr
    assert done.stderr == "Error: fetching https://<redacted>@host/x failed; retry.\n"
