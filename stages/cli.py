"""How a stage runs as a command: expected failures print one clear line, not a traceback."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from stages.paths import PARAMS_FILE


class StageError(Exception):
    """A problem the user can fix (bad params, missing data); reported without a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); exit 2 with one message on a StageError (STAGES_DEBUG=1 re-raises)
    or when params.yaml changed while it ran."""
    stage = Path(main.__code__.co_filename).stem  # under `python -m`, __module__ is __main__
    params_before = _digest(PARAMS_FILE)
    try:
        main()
    except StageError as e:
        if os.environ.get("STAGES_DEBUG"):
            raise
        _report(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        _report("interrupted: no output of this stage was written")
        sys.exit(130)
    if _digest(PARAMS_FILE) != params_before:
        # DVC records the params it reads after the command, which this run did not use
        _report(
            f"error: {PARAMS_FILE} changed while {stage} ran (another `dvc exp run` in this "
            "workspace, or an editor): its outputs are from the values it started with, so this "
            "run is not recorded. Run it again once nothing else changes params.yaml; to run "
            "experiments side by side, use `dvc exp run --queue` then `dvc queue start -j N`, "
            "or `dvc exp run --temp`"
        )
        sys.exit(2)


def _digest(path: Path) -> str | None:
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
