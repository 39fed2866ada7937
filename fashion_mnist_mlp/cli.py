"""How a stage runs as a command: expected failures print one clear line, not a traceback."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from fashion_mnist_mlp.config.paths import PARAMS_FILE


class StageError(Exception):
    """A problem the user can fix (bad params, missing data); reported without a traceback."""


FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
"""A full disk, a file-size limit (ulimit -f), a full quota."""


def run_stage(main: Callable[[], None], check_params: bool = True) -> None:
    """Run a stage's main(); exit 2 with one message on a StageError (STAGES_DEBUG=1 re-raises),
    a full disk, or (`check_params`) when params.yaml changed while it ran. Ctrl-C and SIGTERM
    unwind like an error, so every staged write is removed on the way out."""
    stage = Path(main.__code__.co_filename).stem  # under `python -m`, __module__ is __main__
    signal.signal(signal.SIGTERM, _interrupt)
    # past a file-size limit the kernel kills the process mid-write (SIGXFSZ); ignored, the
    # write fails with EFBIG instead and the stage cleans up and says so
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    params_before = file_digest(PARAMS_FILE)
    try:
        main()
    except StageError as e:
        if os.environ.get("STAGES_DEBUG"):
            raise
        _fail(f"error: {e}", 2)
    except KeyboardInterrupt as e:
        name = e.args[0] if e.args else "SIGINT"
        _fail(
            f"interrupted ({name}): no output of this stage was written", 128 + signal.Signals[name]
        )
    except Exception as e:
        reason = _out_of_space(e)
        if os.environ.get("STAGES_DEBUG"):
            raise
        if reason is None:  # a bug, not the user's input: the traceback, then the way back
            traceback.print_exc()
            _fail(f"error: {stage} failed ({type(e).__name__}, above)", 1)
        _fail(
            f"error: {stage}: {reason} while writing its outputs. None of them was written, and "
            "the earlier outputs and DVC's cache are as they were: free space (or lift the "
            "limit), then rerun (dvc repro)",
            2,
        )
    if check_params and file_digest(PARAMS_FILE) != params_before:
        # DVC records the params it reads after the command, which this run did not use
        _fail(
            f"error: {PARAMS_FILE} changed while {stage} ran (another `dvc exp run` in this "
            "workspace, or an editor): its outputs are from the values it started with, so this "
            "run is not recorded. Run it again once nothing else changes params.yaml; to run "
            "experiments side by side, use `dvc exp run --queue` then `dvc queue start -j N`, "
            "or `dvc exp run --temp`",
            2,
        )


def _fail(message: str, code: int) -> NoReturn:
    _report(f"{message}\n{way_back()}" if way_back() else message)
    sys.exit(code)


def way_back() -> str:
    """Under DVC, the one command back to the last good state, or that the workspace is as it
    was: a workspace `dvc exp run -S` has already written its values into params.yaml (and the
    stages that finished, into dvc.lock), and DVC deleted the failed stage's outputs."""
    if "DVC_STAGE" not in os.environ:
        return ""  # run by hand: nothing of DVC's to undo
    root = os.environ.get("DVC_ROOT")
    if root and Path(root).resolve() != Path.cwd().resolve():
        return (
            "(this experiment ran in a temporary copy, queued or --temp: your workspace is as "
            "it was)"
        )
    return (
        "back to the last commit's params and outputs (this discards params.yaml's and "
        f"dvc.lock's uncommitted changes): git checkout params.yaml dvc.lock && {dvc()} checkout"
    )


def dvc() -> str:
    """`dvc` as the user's shell can run it. `uv run dvc ...` (and the Makefile's targets) put
    the environment's bin/ on the stages' PATH only: the shell that typed it finds no `dvc`."""
    return "uv run dvc" if "UV_RUN_RECURSION_DEPTH" in os.environ else "dvc"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _out_of_space(e: Exception) -> str | None:
    """The reason, if `e` is a write that ran out of space: an OSError, or the Rust I/O error
    safetensors reports as text ("... (os error 28)")."""
    code = e.errno if isinstance(e, OSError) else None
    if code is None and (match := re.search(r"\(os error (\d+)\)", str(e))):
        code = int(match.group(1))
    return os.strerror(code) if code in FULL else None


def file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def _report(message: str) -> None:
    """One write per message, so the lines of several torchrun processes do not interleave;
    processes other than rank 0 say which they are."""
    rank = os.environ.get("RANK", "0")
    prefix = "" if rank == "0" else f"[rank {rank}] "
    sys.stderr.write(f"{prefix}{message}\n")
    sys.stderr.flush()
