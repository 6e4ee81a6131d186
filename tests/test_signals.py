"""study.run.signals.Interrupts, with real signals sent to this process: what a first and a second Ctrl-C do in and
out of Tune's fit, and what a section that must not be cut in two holds back."""
import os
import signal

import pytest

from study.run.signals import Interrupts


def test_a_signal_in_a_deferred_section_takes_effect_when_it_ends():
    with Interrupts() as interrupts:
        with pytest.raises(KeyboardInterrupt):
            with interrupts.deferred():
                os.kill(os.getpid(), signal.SIGINT)
                done = True  # the section runs to its end
        assert done and interrupts.received == "SIGINT"


def test_a_deferred_section_after_a_first_signal_raises_only_for_a_new_one():
    """The driver shuts Ray down in a deferred section after Tune stopped on a first Ctrl-C: that one is not raised
    again there; a second one, sent meanwhile, is, once Ray is down."""
    tune_stops = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: tune_stops.append(True))  # Tune's handler, as fit has it
    try:
        with Interrupts() as interrupts:
            with interrupts.fitting():
                os.kill(os.getpid(), signal.SIGINT)  # the first: Tune is asked to stop, nothing raised
            assert tune_stops == [True] and interrupts.received == "SIGINT"
            with interrupts.deferred():
                pass
            with pytest.raises(KeyboardInterrupt):
                with interrupts.deferred():
                    os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_second_signal_raises_at_once():
    with Interrupts() as interrupts:
        previous = signal.signal(signal.SIGUSR1, lambda *_: None)
        try:
            with pytest.raises(KeyboardInterrupt):
                with interrupts.fitting():
                    os.kill(os.getpid(), signal.SIGINT)
                    os.kill(os.getpid(), signal.SIGINT)
        finally:
            signal.signal(signal.SIGUSR1, previous)
