"""kill -9 of a child process in the middle of a job, for the crash-consistency tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def kill_during(script: str, *args: str, delay: float) -> bool:
    """Runs ``python -c script *args``, waits for the START line the script prints when its
    job begins, and SIGKILLs the child ``delay`` s later; True if it was still running then
    (killed), False if it had finished."""
    with subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "START"
        time.sleep(delay)
        killed = child.poll() is None
        if killed:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    return killed
