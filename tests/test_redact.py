"""nixrepro.redact: secrets never reach a record or a log nixrepro writes."""

from __future__ import annotations

import io
import random

import pytest

from nixrepro.redact import REDACTED, Redactor, is_secret_name

TOKEN = "ghp_R3alLook1ngT0ken42"
WANDB = "0123456789abcdef0123456789abcdef01234567"
AWS = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


# --- which variables are secret ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "OPENAI_API_KEY", "GITHUB_TOKEN", "HF_TOKEN", "DB_PASSWORD", "CLIENT_SECRET",
        "GOOGLE_APPLICATION_CREDENTIALS", "NPM_AUTH", "PROXY_AUTHORIZATION", "WANDB_API_KEY",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "aws_default_region", "my_api_key", "Secret_Sauce",
    ],
)
def test_secret_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["PATH", "HOME", "USER", "LANG", "PWD", "CUDA_VISIBLE_DEVICES", "NIX_PATH", "PYTHONHASHSEED",
     "SSH_AUTH_SOCK", "XAUTHORITY", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL"],
)
def test_ordinary_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_extra_names_are_matched_as_substrings_in_any_case() -> None:
    assert not is_secret_name("PROD_DB_URL")
    assert is_secret_name("PROD_DB_URL", extra=["db_url"])
    assert is_secret_name("db_url_replica", extra=["DB_URL"])
    assert not is_secret_name("HOME", extra=["db_url"])


# --- the recorded environment --------------------------------------------------------------------


def test_recorded_environment_redacts_secret_variables_and_keeps_the_rest() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/home/me", "WANDB_API_KEY": WANDB,
           "AWS_SECRET_ACCESS_KEY": AWS, "GITHUB_TOKEN": TOKEN}
    recorded = Redactor.from_env(env).env(env)
    assert recorded == {
        "AWS_SECRET_ACCESS_KEY": REDACTED,
        "GITHUB_TOKEN": REDACTED,
        "HOME": "/home/me",
        "PATH": "/usr/bin:/bin",
        "WANDB_API_KEY": REDACTED,
    }


def test_a_secret_value_copied_into_an_ordinary_variable_is_scrubbed() -> None:
    env = {"GITHUB_TOKEN": TOKEN, "GIT_REMOTE": f"https://github.com/x/y?t={TOKEN}"}
    recorded = Redactor.from_env(env).env(env)
    assert recorded["GIT_REMOTE"] == f"https://github.com/x/y?t={REDACTED}"


def test_extra_names_redact_more_variables() -> None:
    env = {"PROD_DB_URL": "postgres://db.internal/prod", "HOME": "/root"}
    assert Redactor.from_env(env).env(env)["PROD_DB_URL"] == "postgres://db.internal/prod"
    recorded = Redactor.from_env(env, extra_names=["db_url"]).env(env)
    assert recorded == {"HOME": "/root", "PROD_DB_URL": REDACTED}


def test_short_secret_values_are_redacted_in_the_environment_but_not_scrubbed_from_text() -> None:
    # Values under 6 characters ("1", "true") are too likely to be ordinary words to scrub.
    env = {"USE_AUTH": "true", "API_KEY": "abc"}
    redactor = Redactor.from_env(env)
    assert redactor.env(env) == {"API_KEY": REDACTED, "USE_AUTH": REDACTED}
    assert redactor.scrub("--auth true --n abc") == "--auth true --n abc"


# --- scrubbing argv and free text ----------------------------------------------------------------


def test_secret_values_are_scrubbed_from_argv() -> None:
    redactor = Redactor.from_env({"GITHUB_TOKEN": TOKEN, "WANDB_API_KEY": WANDB})
    argv = ["python", "train.py", f"--token={TOKEN}", "--wandb-key", WANDB, "--lr", "0.1"]
    assert [redactor.scrub(arg) for arg in argv] == [
        "python", "train.py", f"--token={REDACTED}", "--wandb-key", REDACTED, "--lr", "0.1",
    ]


def test_every_occurrence_is_scrubbed() -> None:
    redactor = Redactor.from_env({"GITHUB_TOKEN": TOKEN})
    assert redactor.scrub(f"{TOKEN}{TOKEN} and {TOKEN}") == f"{REDACTED}{REDACTED} and {REDACTED}"


@pytest.mark.parametrize(
    ("text", "scrubbed"),
    [
        ("https://alice:s3cretpw@git.example.com/repo.git", f"https://{REDACTED}@git.example.com/repo.git"),
        ("--remote=https://alice:p%40ss@host/x", f"--remote=https://{REDACTED}@host/x"),
        ("git+https://bot:tok_123@example.org/x", f"git+https://{REDACTED}@example.org/x"),
        ("see https://example.com:8443/path and a@b.c", "see https://example.com:8443/path and a@b.c"),
        ("https://alice@example.com/", "https://alice@example.com/"),
    ],
)
def test_credentials_in_urls_are_scrubbed(text: str, scrubbed: str) -> None:
    assert Redactor.from_env({}).scrub(text) == scrubbed


# --- the stdout/stderr log writer ----------------------------------------------------------------

LOG = (
    "epoch 1 loss=0.731 ✓ naïve café\n"
    f"using token {TOKEN} for the hub\n"
    f"{WANDB}{WANDB}\n"
    "progress: ████████░░ 80%\r\n"
    f"end {TOKEN}"
).encode()
EXPECTED = LOG.decode().replace(WANDB, REDACTED).replace(TOKEN, REDACTED).encode()


def stream(redactor: Redactor, chunks: list[bytes]) -> bytes:
    sink = io.BytesIO()
    writer = redactor.writer(sink)
    for chunk in chunks:
        writer.write(chunk)
    writer.close()
    return sink.getvalue()


def random_chunks(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = rng.randint(1, largest)
        chunks.append(data[i : i + size])
        i += size
    return chunks


@pytest.fixture
def redactor() -> Redactor:
    return Redactor.from_env({"GITHUB_TOKEN": TOKEN, "WANDB_API_KEY": WANDB, "HOME": "/root"})


def test_expected_log_really_contains_the_secrets() -> None:
    assert LOG.count(TOKEN.encode()) == 2 and LOG.count(WANDB.encode()) == 2
    assert EXPECTED.count(REDACTED.encode()) == 4


def test_writer_in_one_chunk(redactor: Redactor) -> None:
    assert stream(redactor, [LOG]) == EXPECTED


def test_writer_fed_byte_by_byte_removes_secrets_split_across_chunks(redactor: Redactor) -> None:
    assert stream(redactor, [LOG[i : i + 1] for i in range(len(LOG))]) == EXPECTED


@pytest.mark.parametrize("largest", [2, 3, 7, 16, 64])
def test_writer_in_random_chunkings_gives_the_same_bytes(redactor: Redactor, largest: int) -> None:
    rng = random.Random(20240611 + largest)
    for _ in range(200):
        chunks = random_chunks(LOG, rng, largest)
        assert b"".join(chunks) == LOG
        assert stream(redactor, chunks) == EXPECTED


def test_writer_never_writes_the_start_of_a_secret_it_has_not_seen_the_end_of(redactor: Redactor) -> None:
    sink = io.BytesIO()
    writer = redactor.writer(sink)
    for byte in TOKEN.encode()[:-1]:
        writer.write(bytes([byte]))
    assert TOKEN[:4].encode() not in sink.getvalue()
    writer.write(TOKEN.encode()[-1:])
    writer.close()
    assert sink.getvalue() == REDACTED.encode()


def test_writer_without_secrets_copies_bytes_unchanged_and_at_once() -> None:
    # Only the last word character waits (it could still end a scheme before ://user:password@,
    # which keeps the scheme as it is); a finished line is written as it comes.
    sink = io.BytesIO()
    writer = Redactor.from_env({"HOME": "/root"}).writer(sink)
    writer.write(LOG[:10])
    assert sink.getvalue() == LOG[:9]
    first_line = LOG.index(b"\n") + 1
    writer.write(LOG[10:first_line])
    assert sink.getvalue() == LOG[:first_line]
    writer.write(LOG[first_line:])
    writer.close()
    assert sink.getvalue() == LOG


def test_binary_output_that_is_not_utf8_passes_through(redactor: Redactor) -> None:
    data = bytes(range(256)) + TOKEN.encode() + b"\xff\xfe"
    chunks = random_chunks(data, random.Random(3), 5)
    assert stream(redactor, chunks) == bytes(range(256)) + REDACTED.encode() + b"\xff\xfe"


@pytest.mark.parametrize("largest", [1, 2, 3, 5, 9])
def test_overlapping_secrets_leak_no_character_in_any_chunking(largest: int) -> None:
    # one secret contains another: whatever the chunking, the longer one is removed whole
    redactor = Redactor.from_env({"OUTER_TOKEN": "abcdefgh", "INNER_TOKEN": "bcdefg"})
    data = b"x abcdefgh y bcdefg z abcdefg"
    whole = stream(redactor, [data])
    assert whole == b"x <redacted> y <redacted> z a<redacted>"
    rng = random.Random(largest)
    for _ in range(50):
        assert stream(redactor, random_chunks(data, rng, largest)) == whole


def test_long_unbroken_lines_are_scrubbed_in_linear_time() -> None:
    """A log of 10,000-character lines (a base64 blob, a progress bar) must stream: the URL
    pattern tried at every position of a word run took 12-36 s per MB, holding the run's logs."""
    import time

    redactor = Redactor.from_env({"API_TOKEN": TOKEN})
    data = (b"A" * 10_000 + b"\n") * 400 + b"url https://user:" + b"p" * 10_000 + b"@host/x\n"
    sink = io.BytesIO()
    writer = redactor.writer(sink)
    started = time.process_time()
    for start in range(0, len(data), 4096):
        writer.write(data[start:start + 4096])
    writer.close()
    assert time.process_time() - started < 10  # about 0.4 s; the quadratic scan: minutes
    assert sink.getvalue() == (b"A" * 10_000 + b"\n") * 400 + b"url https://<redacted>@host/x\n"


@pytest.mark.parametrize(("url", "scrubbed"), [
    ("https://ghp_abc123def456@github.com/o/r", "https://<redacted>@github.com/o/r"),
    ("git+https://glpat-Xy12Ab34@gitlab.com/o/r?ref=main", "git+https://<redacted>@gitlab.com/o/r?ref=main"),
    ("git+ssh://git@github.com/o/r", "git+ssh://git@github.com/o/r"),  # the account, not a secret
    ("hg+https://hg@hg.sr.ht/~o/r", "hg+https://hg@hg.sr.ht/~o/r"),  # from a real public lock
    ("https://a1b2c3d4e5f6a7b8c9d0e1f2@host/x", "https://<redacted>@host/x"),
    ("https://user:pw@host/x", "https://<redacted>@host/x"),
])
def test_a_token_given_as_the_user_name_of_an_https_url_is_scrubbed(url: str, scrubbed: str) -> None:
    from nixrepro.redact import scrub_url

    assert scrub_url(url) == scrubbed
