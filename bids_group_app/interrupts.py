"""Signals that end a run: SIGINT (Ctrl-C), SIGTERM (what SLURM and
``docker stop`` send) and SIGHUP end it the same way, and never halfway
through its commit.

While :func:`handled` is active, each of these signals raises
:class:`~bids_group_app.errors.Interrupted` in the main thread, so the run
unwinds as on any error: its staging folder is removed, and nothing reaches
OUTPUT_DIR. Once the run has started to commit its results
(:func:`commit_started`), a signal no longer stops it: it is recorded
(:func:`received`) and the commit, the last thing a run does, completes;
the run then reports both. Outside :func:`handled` (the package used as a
library) the signals keep their usual behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

from bids_group_app.errors import Interrupted

LOGGER = logging.getLogger(__name__)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_state = {"committing": False, "received": None}


def _handler(signum, frame):
    if _state["committing"]:
        if _state["received"] is None:
            _state["received"] = signum
            LOGGER.warning("received %s while committing the results: finishing the commit first",
                           signal.Signals(signum).name)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handled():
    """Handle SIGINT, SIGTERM and SIGHUP for the duration of the block (a run).

    Does nothing outside the main thread, where Python cannot set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    _state.update(committing=False, received=None)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state.update(committing=False)


def commit_started():
    """From now on the run completes: signals are recorded, not raised."""
    _state["committing"] = True


def received():
    """The name of the signal received during the commit (None when none)."""
    signum = _state["received"]
    return signal.Signals(signum).name if signum is not None else None
