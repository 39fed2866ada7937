"""How a stage runs as a command: expected failures print one clear line, not a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class StageError(Exception):
    """A problem the user can fix (bad params, missing data); reported without a traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main(); exit 2 with one message on a StageError (STAGES_DEBUG=1 re-raises)."""
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


def _report(message: str) -> None:
    """One write per message, so the lines of several torchrun processes do not interleave;
    processes other than rank 0 say which they are."""
    rank = os.environ.get("RANK", "0")
    prefix = "" if rank == "0" else f"[rank {rank}] "
    sys.stderr.write(f"{prefix}{message}\n")
    sys.stderr.flush()
