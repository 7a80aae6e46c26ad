"""A child process that never outlives its owner.

A test run stopped by a timeout, or a ``pmg serve`` killed with SIGKILL, cannot run
its cleanup code: the ComfyUI it started would keep running (and holding a GB of
memory) with nobody to stop it. On Linux the kernel can do that cleanup:
``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in the child makes it receive SIGKILL the moment
its parent ends, whatever the way it ends.

The signal follows the *thread* that started the child: start long-lived servers from
a thread that lives as long as the owner (the main thread in every launcher here).
Elsewhere (macOS, Windows) :func:`die_with_owner` returns ``None`` and nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_owner() -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that ties the child's life to this process.

    Runs in the child between fork and exec: it asks for SIGKILL when the parent ends,
    then checks the parent is still the owner (it may have died before the request),
    and kills itself if not. Returns ``None`` where the platform has no such request.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    owner = os.getpid()

    def request_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != owner:  # the owner died between fork and prctl
            os.kill(os.getpid(), signal.SIGKILL)

    return request_death_signal
