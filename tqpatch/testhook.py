"""A place where tests may kill, fail or pause a tqpatch process (never set by users).

TQPATCH_TEST_HOOK="N:ACTION[,M:ACTION]": at the N-th checkpoint() this process
reaches, ACTION happens: KILL/TERM/HUP/INT (that signal to itself),
sleep=SECONDS, or fail (an OSError "No space left on device"). Crash-safety
tests use it to stop a transaction at every step.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "TQPATCH_TEST_HOOK"
_count = 0


def checkpoint() -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    global _count
    _count += 1
    for item in spec.split(","):
        at, _, action = item.partition(":")
        if not at.strip().isdigit() or int(at) != _count:
            continue
        if action.startswith("sleep="):
            time.sleep(float(action[len("sleep="):]))
        elif action == "fail":
            raise OSError(errno.ENOSPC, "No space left on device (test hook)")
        else:
            os.kill(os.getpid(), getattr(signal, "SIG" + action))
            time.sleep(0.05)  # let a caught signal's handler run here
