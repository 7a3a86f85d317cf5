"""Helper processes that must not outlive the process that started them."""

from __future__ import annotations

import signal


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send `sig` to this process when its parent dies, even by
    SIGKILL, so a killed worker or replay leaves nothing behind (a merge still holding its
    partition, a broker, a rules process). Elsewhere a no-op: the closed pipe to the parent
    still ends the helper."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
