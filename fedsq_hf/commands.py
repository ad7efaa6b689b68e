"""One error path for every command line: a `FedSQError` is one `error:` line and exit status 2, Ctrl-C
one line and 130, an `OSError` (a full disk, a folder it may not write) one line naming the file, what the
errno means and what was kept, and exit status 1. No traceback reaches the user for any of them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .errors import FedSQError

__all__ = ["run_command"]


def run_command(body: Callable[[], int], kept: Callable[[], str] = lambda: "") -> int:
    """`body()`'s exit status; `kept()` says, after an interrupt or a failed write, what is safe and how
    to go on (e.g. "--resume continues from ...")."""
    try:
        return body()
    except FedSQError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted" + (f": {kept()}" if kept() else ""), file=sys.stderr)
        return 130
    except OSError as err:
        meaning = err.strerror or (os.strerror(err.errno) if err.errno else str(err))
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{meaning}" + (f"; {kept()}" if kept() else ""), file=sys.stderr)
        return 1
