"""A C library function where Python has none (``libc_function``): one home for ctypes, for
the layers that need one (``store``: fallocate, renameat2; ``processes``: prctl)."""

from __future__ import annotations

import ctypes
from typing import Any


def libc_function(names: tuple[str, ...], *argtypes: Any) -> Any:
    """The first of ``names`` that libc has, typed ``argtypes -> int``; None without one
    (not Linux). ctypes calls release the GIL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    for name in names:
        function = getattr(libc, name, None)
        if function is not None:
            function.argtypes = argtypes
            function.restype = ctypes.c_int
            return function
    return None
