"""Secrets never reach a record, a log nixrepro writes, or an error message.

A variable is secret when its name contains KEY, SECRET, TOKEN, PASSWORD, CREDENTIAL or AUTH (any
case), starts with AWS_, or is listed in ``[secrets] extra_names``. Its value is replaced by
``<redacted>`` in the recorded environment, and every occurrence of the value is scrubbed from
argv, params and the stdout/stderr logs (the terminal still shows what the program printed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import BinaryIO

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
    upper = name.upper()
    if upper in NOT_SECRET:
        return False
    if upper.startswith("AWS_") or upper in SECRET_NAMES:
        return True
    if _SECRET_WORD.search(upper):
        return True
    return any(e.upper() in upper for e in extra)


@dataclass(frozen=True)
class Redactor:
    """Knows the secret values of one environment and removes them from anything nixrepro keeps."""

    values: tuple[str, ...]
    extra_names: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str], extra_names: Iterable[str] = ()) -> Redactor:
        extra = tuple(extra_names)
        secret = {v for k, v in env.items() if is_secret_name(k, extra) and len(v) >= MIN_SCRUB_LENGTH}
        # Longest first, so a secret that contains another is removed whole.
        return cls(tuple(sorted(secret, key=len, reverse=True)), extra)

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """The environment to record: secret-named variables redacted, other values scrubbed."""
        return {
            name: REDACTED if is_secret_name(name, self.extra_names) else self.scrub(value)
            for name, value in sorted(env.items())
        }

    def scrub(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, REDACTED)
        return _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", text)

    def scrub_bytes(self, data: bytes) -> bytes:
        for value in self.values:
            data = data.replace(value.encode(), REDACTED.encode())
        return data

    def writer(self, sink: BinaryIO) -> ScrubbingWriter:
        return ScrubbingWriter(self, sink)


# user:password@ in URLs (https://user:tok@host), a common way to leak a token into argv
_URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://)[^/\s@:]+:[^/\s@]+@")
# ?access_token=... and the like: a query parameter whose name says it is a secret
_QUERY_SECRET = re.compile(r"([?&])([^=&#\s]+)=([^&#\s]*)")


def scrub_url(url: str) -> str:
    """A URL without its credentials: ``user:password@`` and secret-named query values go, the
    rest (``git@`` of an ssh url, ``?ref=main``) stays, so the URL still says what it names."""
    if "@" in url:  # the checks first: a 200-input flake.lock passes every url through here
        url = _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", url)
    if "=" not in url:
        return url

    def query(match: re.Match[str]) -> str:
        sep, name, value = match.groups()
        return f"{sep}{name}={REDACTED if is_secret_name(name) and value else value}"

    return _QUERY_SECRET.sub(query, url)


class ScrubbingWriter:
    """Writes a byte stream to ``sink`` with secret values replaced, even across chunk borders.

    Holds back the last ``len(longest secret) - 1`` bytes until more arrive or :meth:`close`:
    any secret that starts before that tail is then wholly in the buffer, so overlapping secrets
    are replaced leftmost-longest, exactly as if the stream had arrived in one piece.
    """

    def __init__(self, redactor: Redactor, sink: BinaryIO) -> None:
        self._sink = sink
        values = [v.encode() for v in redactor.values]
        self._pattern = re.compile(b"|".join(re.escape(v) for v in values)) if values else None
        self._keep = max((len(v) for v in values), default=1) - 1
        self._pending = b""

    def write(self, data: bytes) -> None:
        if self._pattern is None:
            self._sink.write(data)
            self._sink.flush()
            return
        buffer = self._pending + data
        self._emit(buffer, len(buffer) - self._keep)

    def _emit(self, buffer: bytes, cut: int) -> None:
        assert self._pattern is not None
        out, position = [], 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= cut:
                break
            out += [buffer[position:match.start()], REDACTED.encode()]
            position = match.end()
        end = max(cut, position)
        out.append(buffer[position:end])
        self._pending = buffer[end:]
        chunk = b"".join(out)
        if chunk:
            self._sink.write(chunk)
            self._sink.flush()

    def close(self) -> None:
        if self._pending and self._pattern is not None:
            self._emit(self._pending, len(self._pending))
        self._sink.flush()
