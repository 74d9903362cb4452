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


def is_secret_name(name: str, extra: Iterable[str] = ()) -> bool:
    upper = name.upper()
    if upper in NOT_SECRET:
        return False
    if upper.startswith("AWS_") or upper in SECRET_NAMES:
        return True
    return any(word in upper for word in (*SECRET_WORDS, *(e.upper() for e in extra)))


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


class ScrubbingWriter:
    """Writes a byte stream to ``sink`` with secret values replaced, even across chunk borders.

    It holds back the last ``len(longest secret) - 1`` bytes until more arrive or :meth:`close`.
    """

    def __init__(self, redactor: Redactor, sink: BinaryIO) -> None:
        self._redactor = redactor
        self._sink = sink
        self._keep = max((len(v.encode()) for v in redactor.values), default=1) - 1
        self._pending = b""

    def write(self, data: bytes) -> None:
        if not self._redactor.values:
            self._sink.write(data)
            self._sink.flush()
            return
        buffer = self._redactor.scrub_bytes(self._pending + data)
        cut = len(buffer) - self._keep
        # Never cut inside a redaction marker we just wrote.
        marker = buffer.rfind(REDACTED.encode(), 0, len(buffer))
        if marker != -1 and marker < cut < marker + len(REDACTED):
            cut = marker + len(REDACTED)
        if cut > 0:
            self._sink.write(buffer[:cut])
            self._sink.flush()
            self._pending = buffer[cut:]
        else:
            self._pending = buffer

    def close(self) -> None:
        if self._pending:
            self._sink.write(self._redactor.scrub_bytes(self._pending))
            self._pending = b""
        self._sink.flush()
