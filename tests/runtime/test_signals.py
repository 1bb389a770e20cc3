"""SIGTERM and Ctrl-C become a stop request; the previous handlers come back afterwards."""

import os
import signal

import pytest
import torch

from byol.runtime.signals import StopSignals


def test_a_signal_is_a_stop_request_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        assert signals.agreed(torch.device("cpu")) is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.agreed(torch.device("cpu")) == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before
