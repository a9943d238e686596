"""Is this output folder usable? Asked before the work, so a bad `-o` / `--model_dir` is one line naming the user's path
instead of a failure after decoding or training (naming an internal temporary file, or leaving a half-made model dir).

One helper for `mt3 transcribe -o`, `mt3 train --model_dir` and `mt3 export-model -o`. It writes nothing: it finds the
nearest existing folder on the path and asks the OS whether it may be written (`os.access` reports a read-only mount as
unwritable even for root).
"""

from __future__ import annotations

import os
from pathlib import Path

from mt3.errors import InputError


def check_writable_dir(path: str | os.PathLike, flag: str) -> None:
    """InputError(path) unless `path` is an existing writable directory or could be created: it must not be a file,
    and the nearest existing folder on it must be a writable directory. `flag` names the option in the message.

    A URL (gs://...) is checked for its protocol library (`mt3.paths.require`: one line naming the package to install)
    and for not being an existing file; write permission shows only on the first write."""
    from mt3 import paths

    if paths.is_url(path):
        paths.require(path, flag)
        if paths.isfile(path):
            raise InputError(path, f"exists and is not a directory ({flag} names a directory)")
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, f"exists and is not a directory ({flag} names a directory)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(path, f"cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise InputError(path, f"{what} (read-only file system or no permission); choose another {flag}")
