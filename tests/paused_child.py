"""A child process that pauses at a point of its work until the test tells it to go on.

The child prints a line saying it is paused, then waits (bounded) for a line on stdin; the test acts
while it waits, then lets it finish.
"""

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["paused_child"]

EXIT_TIMEOUT_SECONDS = 60


@contextmanager
def paused_child(script: Path, *args: str, ready: str) -> Iterator[list[str]]:
    """Run ``script ARGS`` until it prints the line ``ready``; yield the lines it printed until then.

    When the block ends the child gets a line on stdin and must exit with status 0 within a minute;
    the rest of what it printed is then added to the yielded list. A child still running when the
    block fails is killed.
    """
    process = subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        lines: list[str] = []
        while not lines or lines[-1] != ready:
            line = process.stdout.readline()
            assert line, process.stderr.read() if process.stderr else ""
            lines.append(line.strip())
        yield lines
        process.stdin.write("go\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=EXIT_TIMEOUT_SECONDS)
        assert process.returncode == 0, err
        lines.extend(line.strip() for line in out.splitlines())
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
