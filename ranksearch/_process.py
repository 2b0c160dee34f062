"""How a ranksearch process talks and ends: its log lines on stderr, an error as one line, SIGTERM taken
as Ctrl-C, and an exit after a handled interrupt that a late signal cannot cut short. The command line
(:mod:`ranksearch.cli`) and the worker processes (``python -m ranksearch._from_space``) both run this way."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, NoReturn

from ranksearch.errors import RankSearchError

__all__ = ["exit_interrupted", "interrupt", "log_to_stderr", "one_line"]


def log_to_stderr(quiet: bool) -> logging.Logger:
    """The ``ranksearch`` logger, writing timed lines to stderr (warnings and errors only when ``quiet``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("ranksearch")
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    return log


def interrupt(signum: int, frame: Any) -> None:
    """A signal handler: SIGTERM stops a search or worker as Ctrl-C does (the running trial runs again on resume)."""
    raise KeyboardInterrupt


def one_line(e: BaseException) -> str:
    """The error as one line; a file-system error names its path and the fix."""
    if isinstance(e, OSError) and not isinstance(e, RankSearchError):
        where = f" {e.filename!r}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e} (check the path and its permissions; --debug shows the traceback)"
    return " ".join(str(e).split())


def exit_interrupted() -> NoReturn:
    """Interrupted and handled (the study is saved): exit with 130 at once. Signals are ignored from here and
    the interpreter's teardown is skipped, so a late signal cannot cut the exit short and change its code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
