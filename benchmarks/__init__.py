"""blobdl's benchmark harness (``python -m benchmarks``; see benchmarks/README.md).

Importing it writes blobdl's bytecode (``__pycache__``) once, as ``pip install`` does for
a user: every run of blobdl starts a fresh interpreter, and where bytecode is not written
(``PYTHONDONTWRITEBYTECODE``, set on some machines and containers) each of them would
otherwise compile its 100 modules again, about 75 ms of CPU no installed blobdl pays,
counted against it and never against curl or aria2c.
"""

from __future__ import annotations

import compileall
from pathlib import Path

compileall.compile_dir(Path(__file__).resolve().parent.parent / "blobdl", quiet=1)
