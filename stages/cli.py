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
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output of this stage was written", file=sys.stderr)
        sys.exit(130)
