"""Imported at start-up, as `sitecustomize`, by every Python process with this folder on
PYTHONPATH. With KILL_BEFORE_REPLACING set to a path, the process about to rename anything onto
that path SIGKILLs its whole process group first, as the OOM killer or a lost machine would stop
a run at that moment: tests/e2e/test_interruption.py stops a stage this way at a point of its
run that no timing reaches reliably. Without the variable it does nothing."""

import os
import signal
import sys

TARGET = os.environ.get("KILL_BEFORE_REPLACING")


def kill_before_replacing(event: str, args: tuple[object, ...]) -> None:
    # os.rename and os.replace both raise "os.rename" (src, dst, src_dir_fd, dst_dir_fd)
    if event == "os.rename" and os.path.realpath(args[1]) == os.path.realpath(TARGET):
        os.killpg(os.getpgrp(), signal.SIGKILL)


if TARGET:
    sys.addaudithook(kill_before_replacing)
