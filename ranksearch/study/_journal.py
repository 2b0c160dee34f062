"""The journal file a study lives in: checked before Optuna reads it, and repaired when a crash cut its
last record short.

Optuna's journal is one JSON record a line, appended under a file lock. A process killed mid-write (or a
full disk) leaves a last line without its newline. Optuna skips such a line when reading, but the next
append lands right after it, which glues two records into one line that nothing can read: every trial of
the study would be lost. So before a study's journal is opened, :func:`check_journal` reads it under the
same lock: a torn last record is cut off (the file as it was is copied aside first, and the repair is said
in one line), and a damaged record anywhere else is refused in one line that names the file and the record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from optuna.storages.journal import JournalFileSymlinkLock

from ranksearch.errors import StorageError

__all__ = ["check_journal"]

_log = logging.getLogger(__name__)


def _damage(line: bytes) -> str | None:
    """Why one journal line is not a record (None: it is one)."""
    try:
        record = json.loads(line)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except (json.JSONDecodeError, RecursionError) as e:
        return f"not JSON ({str(e).split(':')[0]})"
    if not isinstance(record, dict) or not isinstance(record.get("op_code"), int):
        return "not an Optuna journal operation"
    return None


def _check_records(path: Path, lines: list[bytes]) -> None:
    for number, line in enumerate(lines, 1):
        if (why := _damage(line.rstrip(b"\r"))) is not None:
            raise StorageError(f"Journal {str(path)!r} is damaged at record {number} of {len(lines)} ({why}); restore it from a "
                               "copy, or start a new study (another --out or --storage).")


def check_journal(path: Path) -> Path | None:
    """Check the journal at ``path`` (an existing file) and cut a torn last record off; returns where the
    file as it was is kept when it was repaired, else None.

    Raises:
        StorageError: a record before the last is damaged (a file that is not a journal, or corrupted).
    """
    if not os.access(path.parent, os.W_OK) or not os.access(path, os.W_OK):  # read only (an export from a copy): nothing
        _check_records(path, path.read_bytes().split(b"\n")[:-1])       # will append, so a torn tail is left for Optuna to skip
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()  # no writer is halfway through an append while we look
    try:
        data = path.read_bytes()
        *lines, tail = data.split(b"\n")  # a complete file ends with a newline: tail is empty
        _check_records(path, lines)
        if not tail:
            return None
        kept = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, kept)
        whole = _damage(tail.rstrip(b"\r")) is None  # a complete record that only lost its newline: kept
        with path.open("r+b") as f:
            if whole:
                f.seek(0, 2)
                f.write(b"\n")
            else:
                f.truncate(len(data) - len(tail))
    finally:
        lock.release()
    _log.warning("journal %s: its last record %s (a crash mid-write): going on from %s; the file as it was is kept as %s", path,
                 "lost its newline" if whole else f"was cut short ({len(tail)} bytes)",
                 "all its records" if whole else "the last complete record", kept)
    return kept
