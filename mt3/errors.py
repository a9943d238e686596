"""One exception type for bad user input, so every command reports it the same way.

The CLI turns an `InputError` into a single line `mt3 CMD: error: PATH: problem` and exit code 2; library callers can
catch it and decide (e.g. `--skip-bad` logs and goes on).
"""

from __future__ import annotations

import os


class InputError(Exception):
    """A user-supplied file or value is unusable. `str(err)` is `PATH: problem`."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
