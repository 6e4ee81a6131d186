"""Ctrl-C (SIGINT) and SIGTERM, as the driver handles them."""
from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Optional


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM, as the driver handles them.

    The first one while Tune runs trials asks Tune to stop after saving its experiment state (Tune
    stops so on SIGUSR1), so that the unfinished trials can be told apart and resumed; `received`
    then names the signal. Any other one raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.received: Optional[str] = None
        self.count = 0  # signals received so far
        self.in_fit = False
        self.deferring = False
        self.previous: dict = {}

    def handle(self, signum: int, frame) -> None:
        first = self.received is None
        self.received = signal.Signals(signum).name
        self.count += 1
        if self.deferring:
            return  # raised once the section that must not be cut is done
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if first and self.in_fit and callable(tune_stop):
            print(f"\n{self.received}: stopping after the trials' last checkpoints; press Ctrl-C again to stop at "
                  f"once", file=sys.stderr)
            tune_stop(signal.SIGUSR1, frame)
            return
        raise KeyboardInterrupt

    @contextmanager
    def deferred(self):
        """A section an interrupt must not cut in two (MLflow creating its database tables: a store interrupted there
        is left unusable; Ray shutting down: a driver cut off there can be ended by Ray's own threads with another exit
        code); a signal in it takes effect when it ends."""
        before, self.deferring = self.count, True
        try:
            yield
        finally:
            self.deferring = False
        if self.count > before:
            raise KeyboardInterrupt

    @contextmanager
    def fitting(self):
        """Tune's fit: a first signal in it asks Tune to stop cleanly (see the class) rather than raising at once."""
        self.raise_if_received()
        self.in_fit = True
        try:
            yield
        finally:
            self.in_fit = False

    def raise_if_received(self) -> None:
        """Before the trials start: an interrupt whose KeyboardInterrupt a library swallowed still stops."""
        if self.received:
            raise KeyboardInterrupt

    def take_back_sigterm(self) -> None:
        """ray.init makes SIGTERM exit the driver at once; take it back, so it stops the study cleanly."""
        signal.signal(signal.SIGTERM, self.handle)

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
