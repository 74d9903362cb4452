"""Secrets never reach a record, a log nixrepro writes, a tracker's files or an error message.

A variable is secret when its name contains KEY, SECRET, TOKEN, PASSWORD, CREDENTIAL or AUTH (any
case), starts with AWS_, or is listed in ``[secrets] extra_names``. Its value is replaced by
``<redacted>`` in the recorded environment, and every occurrence of the value is scrubbed from
argv, params, name, tags, the dev patch and the stdout/stderr logs (the terminal still shows what
the program printed). The command line gives secrets of its own: the value of a secret-named flag
(``--token=X``, ``--api-key X``, ``DB_PASSWORD=X``), of a secret-named param (``-p api_key=X``) and
the credentials of a URL (``https://user:pw@host``, ``?access_token=X``); they are redacted where
they stand and scrubbed everywhere else too. Credentials in URLs are scrubbed from any text, the
logs included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import unquote

REDACTED = "<redacted>"
SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
SECRET_NAMES = ("WANDB_API_KEY",)
# Shorter values are too likely to be ordinary words or numbers to scrub from free text.
MIN_SCRUB_LENGTH = 6
# Values that are secret-named but harmless and useful to keep (file paths, not secrets).
NOT_SECRET = ("SSH_AUTH_SOCK", "XAUTHORITY", "GPG_AGENT_INFO")


# AUTH but not AUTHOR: GIT_AUTHOR_NAME is not a credential.
_SECRET_WORD = re.compile("|".join(w if w != "AUTH" else "AUTH(?!ORS?(?:_|$))" for w in SECRET_WORDS))


def is_secret_name(name: str, extra: Iterable[str] = ()) -> bool:
    """An environment variable's name (and a URL query parameter's) that says it holds a secret."""
    upper = name.upper()
    if upper in NOT_SECRET:
        return False
    if upper.startswith("AWS_") or upper in SECRET_NAMES:
        return True
    if _SECRET_WORD.search(upper):
        return True
    return any(e.upper() in upper for e in extra)


# Params and flags are named by ML code, where max_tokens, tokenizer and monkey_patch are no
# credentials: there a *word* of the name must say secret, not any substring of it.
_SECRET_PARTS = frozenset((
    "key", "secret", "secrets", "token", "password", "passwd", "passphrase", "credential",
    "credentials", "auth", "apikey", "accesskey", "secretkey", "privatekey", "authtoken",
    "accesstoken", "bearer",
))
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")  # snake, kebab, dotted and camelCase
# A credential is text: a secret-named value that is a number or a bool (key_dim=64) is kept.
_PLAIN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|true|false|True|False")


def is_secret_key(name: str, extra: Iterable[str] = ()) -> bool:
    """A param's or a command-line flag's name that says its value is a secret (``api_key``,
    ``--hf-token``, ``dbPassword``), or that holds one of ``extra`` (any case)."""
    if any(word.lower() in _SECRET_PARTS for word in _WORDS.findall(name)):
        return True
    return any(e.upper() in name.upper() for e in extra)


def _secret_value(value: str) -> bool:
    return bool(value) and _PLAIN.fullmatch(value) is None


# --name=value, +db.password=value (Hydra), API_KEY=value (an `env` argument)
_ASSIGNMENT = re.compile(r"([-+~]*)([A-Za-z_][\w.-]*)=(.*)", re.S)
_FLAG = re.compile(r"-{1,2}([A-Za-z_][\w.-]*)")


def _argv_secrets(argv: Iterable[str], extra: Iterable[str]) -> Iterator[tuple[int, str, str]]:
    """(index, prefix, value) of every secret value in argv: ``--token=X`` gives (i, "--token=",
    "X"); ``--api-key X`` gives (i + 1, "", "X"), unless X is another flag or a plain number."""
    extra = tuple(extra)
    flagged = False
    for index, arg in enumerate(argv):
        if flagged and not arg.startswith("-") and _secret_value(arg):
            yield index, "", arg
            flagged = False
            continue
        flagged = False
        assignment = _ASSIGNMENT.fullmatch(arg)
        if assignment and is_secret_key(assignment[2], extra):
            if _secret_value(assignment[3]):
                yield index, assignment[1] + assignment[2] + "=", assignment[3]
            continue
        flag = _FLAG.fullmatch(arg)
        flagged = flag is not None and is_secret_key(flag[1], extra)


# user:password@ in URLs (https://user:tok@host), a common way to leak a token into argv
# Tried only where a run of scheme characters begins (the lookbehind): tried at every position
# of a long run of word characters (a base64 blob in a log), the scheme part is quadratic.
_URL_CREDENTIALS = re.compile(r"(?<![\w+.-])([+.-]*\w[\w+.-]*://)[^/\s@:]+:[^/\s@]+@")
_URL_PASSWORD = re.compile(r"\w[\w+.-]*://[^/\s@:]+:([^/\s@]+)@")
# ?access_token=... and the like: a query parameter whose name says it is a secret. A "?" ends a
# value too: ?next=https://h/cb?token=X hides the token in the value of next otherwise.
_QUERY_SECRET = re.compile(r"([?&])([^=&#?\s]+)=([^&#?\s]*)")


# Over http(s) a token is often given as the user name alone (https://ghp_xxx@github.com/o/r);
# a real account name (hg@hg.sr.ht, alice@) says what the URL names and stays.
_HTTP_TOKEN_USER = re.compile(r"(?<![\w+.-])([+.-]*(?:\w[\w+.-]*\+)?https?://)([^/\s@:]+)@")
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "gldt-", "hf_")


def _token_like(user: str) -> bool:
    """A forge's token prefix, or 20+ characters of letters and digits mixed: no one's login."""
    if user.startswith(_TOKEN_PREFIXES):
        return True
    return (len(user) >= 20 and any(c.isdigit() for c in user) and any(c.isalpha() for c in user)
            and user != REDACTED)


def strip_credentials(url: str) -> str:
    """A URL as a record keeps it: ``https://user:token@host/x?token=s`` -> ``https://host/x?token=***``.

    The whole user part goes (a record names the repository, not who fetched it), scp-like
    ``git@host:x`` is kept, and secret-named query values are scrubbed as :func:`scrub_url` does.
    """
    return scrub_url(re.sub(r"^(\w[\w+.-]*://)[^/@]+@", r"\1", url))


def scrub_url(url: str) -> str:
    """A URL without its credentials: ``user:password@``, a token given as the user name over
    http(s) and secret-named query values go, the rest (``git@`` of an ssh url, ``?ref=main``) stays, so the
    URL still says what it names. Any text may be passed: every URL in it is scrubbed."""
    if "@" in url:  # the checks first: a 200-input flake.lock passes every url through here
        url = _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", url)
        url = _HTTP_TOKEN_USER.sub(lambda m: m[1] + REDACTED + "@" if _token_like(m[2]) else m[0],
                                   url)
    if "=" not in url:
        return url

    def query(match: re.Match[str]) -> str:
        sep, name, value = match.groups()
        return f"{sep}{name}={REDACTED if is_secret_name(name) and value else value}"

    return _QUERY_SECRET.sub(query, url)


def url_secrets(text: str) -> set[str]:
    """The passwords and secret-named query values of the URLs in ``text``, as written and
    percent-decoded (a program that connects with them may well print the decoded form)."""
    found = set(_URL_PASSWORD.findall(text)) if "@" in text else set()
    if "=" in text:
        found |= {value for _sep, name, value in _QUERY_SECRET.findall(text)
                  if value and is_secret_name(name)}
    return found | {unquote(value) for value in found}


@dataclass(frozen=True)
class Redactor:
    """Knows the secret values of one run and removes them from anything nixrepro keeps."""

    values: tuple[str, ...]
    extra_names: tuple[str, ...] = ()

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], extra_names: Iterable[str] = (), *,
        argv: Iterable[str] = (), params: Mapping[str, Any] | None = None,
    ) -> Redactor:
        """The secrets of an environment, and those the command line (``argv``, ``params``) holds."""
        extra = tuple(extra_names)
        argv = list(argv)
        secret = {v for k, v in env.items() if is_secret_name(k, extra)}
        secret.update(value for _i, _prefix, value in _argv_secrets(argv, extra))
        secret.update(v for k, v in (params or {}).items()
                      if isinstance(v, str) and is_secret_key(k, extra) and _secret_value(v))
        for text in [*env.values(), *argv, *(v for v in (params or {}).values() if isinstance(v, str))]:
            secret |= url_secrets(text)
        secret = {v for v in secret if len(v) >= MIN_SCRUB_LENGTH}
        # Longest first, so a secret that contains another is removed whole.
        return cls(tuple(sorted(secret, key=len, reverse=True)), extra)

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment to record: secret-named variables redacted, other values scrubbed."""
        return {
            name: REDACTED if is_secret_name(name, self.extra_names) else self.scrub(value)
            for name, value in sorted(env.items())
        }

    def scrub(self, text: str) -> str:
        """``text`` without the secret values and without the credentials of any URL in it."""
        for value in self.values:
            text = text.replace(value, REDACTED)
        return scrub_url(text)

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line as recorded: the values of secret-named flags redacted, then scrubbed."""
        args = list(argv)
        for index, prefix, _value in _argv_secrets(args, self.extra_names):
            args[index] = prefix + REDACTED
        return [self.scrub(arg) for arg in args]

    def params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Params as recorded: a secret-named param's text redacted, every other text scrubbed."""
        return {
            key: (REDACTED if is_secret_key(key, self.extra_names) and _secret_value(value)
                  else self.scrub(value)) if isinstance(value, str) else value
            for key, value in params.items()
        }

    def scrub_bytes(self, data: bytes) -> bytes:
        """What :meth:`writer` would write for ``data`` (the dev patch goes through here)."""
        return _Pipeline(self.values).finish(data)

    def writer(self, sink: BinaryIO) -> ScrubbingWriter:
        return ScrubbingWriter(self, sink)


# --- streams: the logs are scrubbed as they are written -------------------------------------------

_WHITESPACE = b" \t\n\r\f\v"  # what bytes regexes call \s: no credential spans one
_SCHEME_CHARS = b"".join(bytes([c]) for c in range(256) if re.fullmatch(rb"[\w+.-]", bytes([c])))
# the text patterns above, for the byte streams: one spelling of each, so the two cannot drift
_URL_CREDENTIALS_B = re.compile(_URL_CREDENTIALS.pattern.encode())
_QUERY_SECRET_B = re.compile(_QUERY_SECRET.pattern.encode())


def _run_start(buffer: bytes) -> int:
    """Where the last whitespace-free run of ``buffer`` begins."""
    return max(buffer.rfind(bytes([c])) for c in _WHITESPACE) + 1


_LAST_WORD_CHAR = re.compile(rb"\w[+.-]*\Z")


def _scheme_start(run: bytes, end: int) -> int | None:
    """Where a URL scheme ending at ``end`` must be kept from: its last word character, if it has
    one. The pattern writes the scheme through unchanged and needs only one word character before
    ``://``, so holding back more of it changes nothing, and a long unbroken line of word
    characters (a base64 blob) would be held and re-scanned whole on every write."""
    head = run[:end]
    start = len(head.rstrip(_SCHEME_CHARS))
    match = _LAST_WORD_CHAR.search(head, start)
    return match.start() if match else None


def _credentials_live(buffer: bytes) -> int:
    """The start of the longest suffix that could still become ``scheme://user:password@``."""
    base = _run_start(buffer)
    run = buffer[base:]
    starts = []
    sep = run.rfind(b"://")
    if sep != -1:
        rest = run[sep + 3:]
        if b"/" not in rest and b"@" not in rest and not rest.startswith(b":"):
            starts.append(_scheme_start(run, sep))
    for tail in (b":/", b":", b""):
        if run.endswith(tail):
            starts.append(_scheme_start(run, len(run) - len(tail)))
    found = [start for start in starts if start is not None]
    return base + min(found) if found else len(buffer)


def _query_live(buffer: bytes) -> int:
    """The start of a trailing ``?name=value`` whose value would be redacted and may go on (or
    whose name is still arriving)."""
    base = _run_start(buffer)
    run = buffer[base:]
    start = max(run.rfind(b"?"), run.rfind(b"&"))  # "?", "&" and "#" end names and values
    if start == -1 or b"#" in run[start:]:
        return len(buffer)
    equals = run.find(b"=", start + 1)
    if equals == -1:
        return base + start
    secret = equals > start + 1 and is_secret_name(run[start + 1:equals].decode("utf-8", "replace"))
    return base + start if secret else len(buffer)


def _credentials_replacement(match: re.Match[bytes]) -> bytes:
    return match[1] + REDACTED.encode() + b"@"


def _query_replacement(match: re.Match[bytes]) -> bytes:
    sep, name, value = match.groups()
    secret = value and is_secret_name(name.decode("utf-8", "replace"))
    return sep + name + b"=" + (REDACTED.encode() if secret else value)


class _Stage:
    """One substitution over a stream, exactly as over the whole text: it holds back only the
    suffix where a match could still begin (``live`` says where), and emits the rest scrubbed."""

    def __init__(self, pattern: re.Pattern[bytes], replacement: Callable[[re.Match[bytes]], bytes],
                 live: Callable[[bytes], int]) -> None:
        self._pattern, self._replacement, self._live = pattern, replacement, live
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data
        return self._emit(buffer, self._live(buffer))

    def finish(self, data: bytes = b"") -> bytes:
        buffer = self._pending + data
        return self._emit(buffer, len(buffer))

    def _emit(self, buffer: bytes, cut: int) -> bytes:
        out, position = [], 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= cut:
                break
            # a match that starts before the cut is complete: a longer one starting at the same
            # place would still be live, and the cut would lie before it
            out += [buffer[position:match.start()], self._replacement(match)]
            position = match.end()
        end = max(cut, position)
        out.append(buffer[position:end])
        self._pending = buffer[end:]
        return b"".join(out)


class _Pipeline:
    """Secret values first, then URL credentials, then secret query values: the order of
    :meth:`Redactor.scrub`, each stage fed what the one before let through."""

    def __init__(self, values: Iterable[str]) -> None:
        secrets = [v.encode() for v in values]
        self._stages = [_Stage(_URL_CREDENTIALS_B, _credentials_replacement, _credentials_live),
                        _Stage(_QUERY_SECRET_B, _query_replacement, _query_live)]
        if secrets:
            pattern = re.compile(b"|".join(re.escape(v) for v in secrets))
            self._stages.insert(0, _Stage(pattern, lambda _m: REDACTED.encode(),
                                          lambda buffer: _values_live(buffer, secrets)))

    def feed(self, data: bytes) -> bytes:
        for stage in self._stages:
            if not data:
                break
            data = stage.feed(data)
        return data

    def finish(self, data: bytes = b"") -> bytes:
        for stage in self._stages:
            data = stage.finish(data)
        return data


def _values_live(buffer: bytes, secrets: list[bytes]) -> int:
    """The start of the longest suffix of ``buffer`` that is a proper prefix of some secret: only
    that much waits for more bytes (a 4,000-character key holds back nothing that cannot be it)."""
    live = len(buffer)
    for secret in secrets:
        first = secret[:1]
        index = buffer.find(first, max(0, len(buffer) - len(secret) + 1))
        while index != -1 and index < live:
            if secret.startswith(buffer[index:]):
                live = index
                break
            index = buffer.find(first, index + 1)
    return live


class ScrubbingWriter:
    """Writes a byte stream to ``sink`` scrubbed as :meth:`Redactor.scrub_bytes` would scrub the
    whole of it, even across chunk borders, while holding back as little as it can: only a suffix
    that could still be the start of a secret value or of a URL's credentials (at most the
    trailing word, for ordinary output). What it holds is written by :meth:`close`."""

    def __init__(self, redactor: Redactor, sink: BinaryIO) -> None:
        self._sink = sink
        self._pipeline = _Pipeline(redactor.values)

    def write(self, data: bytes) -> None:
        self._put(self._pipeline.feed(data))

    def close(self) -> None:
        self._put(self._pipeline.finish())
        self._sink.flush()

    def _put(self, chunk: bytes) -> None:
        if chunk:
            self._sink.write(chunk)
            self._sink.flush()
