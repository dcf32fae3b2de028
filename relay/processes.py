"""Child-process plumbing shared by `relay dev`'s supervisor and the embedded Redis."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Run in a child before exec: on Linux, the kernel kills it if its parent dies.

    So even a SIGKILLed `relay dev` leaves no orphan redis-server, API or worker behind.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
