"""Child-process plumbing shared by `relay dev`'s supervisor and its embedded stores."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Run in a child before exec: on Linux, the kernel sends it `signum` if its parent dies.

    So even a SIGKILLed `relay dev` leaves no orphan redis-server, PostgreSQL, API or worker
    behind. A change of user clears the setting, so call this after any setuid.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum)
