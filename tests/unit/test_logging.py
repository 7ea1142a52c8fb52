"""The library's log records are its caller's to show, as urllib3's and s3transfer's are."""

from __future__ import annotations

import logging
import subprocess
import sys

import blobdl

# A fresh interpreter: no test's logging set-up can hide what a plain `import blobdl` does.
SCRIPT = """
import logging, blobdl
logging.getLogger("blobdl").warning("unheard")  # no configuration: not Python's last resort
logging.basicConfig(format="heard: %(message)s")
logging.getLogger("blobdl").warning("kept")  # the caller's configuration still gets it
"""


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger(blobdl.__name__).handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers)


def test_a_warning_reaches_the_callers_logging_and_nothing_else() -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "heard: kept\n"
