"""Command line: ``ranksearch spectra | solve | search | worker | export | apply | report``.

The CLI parses, prints and sets exit codes; the library does the rest. ``main(argv)`` returns the exit
code, so tests call it in-process. Errors in the user's input (:class:`~ranksearch.RankSearchError` and
file-system errors) print one line on stderr and exit 2 (the traceback with ``--debug``); failing trials
or workers exit 1; Ctrl-C and SIGTERM exit 130 with the command that resumes. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from ranksearch._workers import WorkersFailed, exit_interrupted
from ranksearch.cli._commands import COMMANDS
from ranksearch.cli._parser import parser
from ranksearch.errors import RankSearchError
from ranksearch.study._loop import TrialsFailing

__all__ = ["main", "main_entry"]

_log = logging.getLogger("ranksearch")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failing trials or workers, 2 bad input, 130 interrupted)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser(show_rare="--help-all" in raw).parse_args([a if a != "--help-all" else "--help" for a in raw])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    _log.handlers[:] = [handler]
    _log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    start = time.perf_counter()
    args.progress = not (args.quiet or args.no_progress) and sys.stderr.isatty()  # bars on a terminal; log lines go above them
    previous = signal.signal(signal.SIGTERM, _interrupt) if args.command in ("search", "worker") else None
    try:
        with logging_redirect_tqdm(loggers=[_log]) if args.progress else contextlib.nullcontext():
            code = COMMANDS[args.command](args)
    except (RankSearchError, OSError) as e:
        if args.debug:
            raise
        print(f"ranksearch {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (TrialsFailing, WorkersFailed) as e:
        if args.debug:
            raise
        print(f"ranksearch {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = " --resume" if args.command == "search" and not getattr(args, "resume", False) else ""
        print(f"ranksearch {args.command}: interrupted; finished trials are kept, resume with: "
              f"{' '.join(['ranksearch', *raw])}{hint}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return code


def _one_line(e: BaseException) -> str:
    """The error as one line; a file-system error names its path and the fix."""
    if isinstance(e, OSError) and not isinstance(e, RankSearchError):
        where = f" {e.filename!r}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e} (check the path and its permissions; --debug shows the traceback)"
    return " ".join(str(e).split())


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a search or worker as Ctrl-C does (the running trial is run again on resume)."""
    raise KeyboardInterrupt


def main_entry() -> None:
    """Console-script entry point."""
    code = main()
    if code == 130:
        exit_interrupted()
    sys.exit(code)

