"""Command line: ``ranksearch spectra | solve | search | worker | export | apply | report``.

The CLI parses, prints and sets exit codes; the library does the rest. ``main(argv)`` returns the exit
code, so tests call it in-process. Errors in the user's input (:class:`~ranksearch.RankSearchError` and
file-system errors) print one line on stderr and exit 2 (the traceback with ``--debug``); failing trials
or workers exit 1; Ctrl-C and SIGTERM exit 130 with the command that resumes. Progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from tqdm.contrib.logging import logging_redirect_tqdm

from ranksearch._process import exit_interrupted, interrupt, log_to_stderr, one_line
from ranksearch._workers import WorkersFailed
from ranksearch.cli._commands import COMMANDS
from ranksearch.cli._parser import parser
from ranksearch.errors import RankSearchError
from ranksearch.study._loop import TrialsFailing

__all__ = ["main", "main_entry"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failing trials or workers, 2 bad input, 130 interrupted)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parser(show_rare="--help-all" in raw).parse_args([a if a != "--help-all" else "--help" for a in raw])
    log = log_to_stderr(args.quiet)
    start = time.perf_counter()
    args.progress = not (args.quiet or args.no_progress) and sys.stderr.isatty()  # bars on a terminal; log lines go above them
    previous = signal.signal(signal.SIGTERM, interrupt) if args.command in ("search", "worker") else None
    try:
        with logging_redirect_tqdm(loggers=[log]) if args.progress else contextlib.nullcontext():
            code = COMMANDS[args.command](args)
    except (RankSearchError, OSError) as e:
        if args.debug:
            raise
        print(f"ranksearch {args.command}: error: {one_line(e)}", file=sys.stderr)
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
    log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return code


def main_entry() -> None:
    """Console-script entry point."""
    code = main()
    if code == 130:
        exit_interrupted()
    sys.exit(code)

