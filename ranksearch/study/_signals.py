"""Signals stop a worker only inside a trial, so an interrupt never loses a trial or an enqueued allocation."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["InterruptGate"]


class InterruptGate:
    """Ctrl-C (SIGINT) and SIGTERM stop a worker only inside a trial's objective.

    Outside it (while Optuna creates, samples or finishes a trial) the signal is held back and raised
    at the next objective's start, where the trial is failed and its allocation enqueued again; so an
    interrupt can never leave a trial RUNNING without a worker, or pop an enqueued allocation and
    drop it. Only the main thread can handle signals; elsewhere the gate does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending = False
        self.active = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> InterruptGate:
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._hold)
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if self.active:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)
            self.active = False
        if self.pending and kind is None:
            self.pending = False
            raise KeyboardInterrupt

    def _hold(self, signum: int, frame: Any) -> None:
        self.pending = True

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        """Inside: a signal (or one held back) raises KeyboardInterrupt."""
        if not self.active:
            yield
            return
        for sig in self.SIGNALS:
            signal.signal(sig, self._raise)
        try:
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt
            yield
        finally:
            for sig in self.SIGNALS:
                signal.signal(sig, self._hold)
