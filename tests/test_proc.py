"""Outside programs: a build reports its progress as it goes, and its output is captured all the same."""

from __future__ import annotations

import io
import sys
import time
import uuid
from pathlib import Path

import pytest

from nixrepro import proc
from nixrepro.errors import CommandError, NixCommandError
from nixrepro.nix import Nix
from tests.helpers import make_project

SLOW_TALKER = [sys.executable, "-c", (
    "import sys, time\n"
    "sys.stderr.write('first\\n'); sys.stderr.flush(); time.sleep(0.5)\n"
    "sys.stderr.write('second\\n'); print('the answer')\n"
    "sys.exit(int(sys.argv[1]))"
)]


class Stamped(io.StringIO):
    """Remembers when each line arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.arrivals.append((time.monotonic(), text))
        return super().write(text)


def test_stderr_reaches_the_stream_as_it_comes_and_is_captured_too() -> None:
    stream = Stamped()
    result = proc.run([*SLOW_TALKER, "0"], stream_stderr=stream)
    assert result.stdout == "the answer\n"
    assert result.stderr == "first\nsecond\n"
    assert [text for _, text in stream.arrivals] == ["first\n", "second\n"]
    (first, _), (second, _) = stream.arrivals
    assert second - first >= 0.4  # line by line, not all at the end


def test_a_failing_streamed_program_raises_with_its_stderr() -> None:
    stream = io.StringIO()
    with pytest.raises(CommandError) as caught:
        proc.run([*SLOW_TALKER, "3"], stream_stderr=stream)
    assert caught.value.returncode == 3
    assert "second" in caught.value.stderr
    assert stream.getvalue() == "first\nsecond\n"


def test_streaming_feeds_input_like_the_captured_path() -> None:
    cat = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"]
    assert proc.run(cat, input="abc", stream_stderr=io.StringIO()).stdout == "ABC"


@pytest.mark.nix
def test_a_nix_build_shows_its_progress_only_when_asked(tmp_path: Path) -> None:
    # a label never built before: the store outlives test sessions
    project = make_project(tmp_path, label=f"progress-{uuid.uuid4().hex[:12]}")
    shown = io.StringIO()
    out = Nix(progress=shown).build(".#env", cwd=project.root)
    assert out.startswith("/nix/store/") and Path(out).is_dir()
    assert "building '/nix/store/" in shown.getvalue()  # nix's own message, as it built

    quiet = make_project(tmp_path / "quiet", label=f"quiet-{uuid.uuid4().hex[:12]}")
    assert Nix().build(".#env", cwd=quiet.root).startswith("/nix/store/")

    with pytest.raises(NixCommandError) as caught:
        Nix(progress=io.StringIO()).build(".#no-such-output", cwd=project.root)
    assert "no-such-output" in caught.value.stderr
