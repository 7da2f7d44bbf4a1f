"""Stopping cleanly: SIGINT/SIGTERM become an event the training loop checks after each step.

The first signal asks the loop to finish its current step, write a checkpoint and raise
:class:`~daelab.errors.TrainingInterrupted`; a second one stops at once (``KeyboardInterrupt``).
Handlers can only be installed from the main thread; elsewhere the event is simply never set.
"""
from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class StopSignals:
    """Turn SIGINT/SIGTERM into a :class:`threading.Event` for the duration of a ``with`` block.

    Returns the event from ``__enter__``; the previous handlers are restored on exit.
    """

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def _handle(self, signum, frame):
        if self.event.is_set():  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("%s received: finishing the current step and writing a checkpoint",
                    signal.Signals(signum).name)
        self.event.set()

    def __enter__(self) -> threading.Event:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self.event

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
