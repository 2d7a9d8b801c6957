"""What the user sees on the terminal besides the report: notes, a progress bar, and the error that stops a run."""

from __future__ import annotations

import sys
import time


class BenchError(Exception):
    """A benchmark could not run (a server did not start, a timeout): one line for the user."""


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal (no dependency for ten lines)."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.enabled = sys.stderr.isatty()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < 0.1):
            return
        self._last = now
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        sys.stderr.write(f"\r{self.label:<18} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
