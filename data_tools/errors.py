"""Bad input, found and reported one way by every command-line tool: one line on stderr,
`error: <file>:<line>: field '<name>': <problem>`, and exit status 2, never a traceback.

Every entrypoint that reads a file ends with `run_tool(main)`. Bad input is a `DataError` (a
row, a file with no rows), any other `ValueError` (an option refused by its dataclass, a
DeepSpeed config refused by `ConfigError`), or an `OSError` (a path that cannot be read, a
model folder that is not there). Library calls and tests still get the exception itself; only
the process turns it into a line, which a user can act on and a script can grep. The readers
share `open_input` (a missing file is a `DataError` naming it) and `non_finite` (NaN is not
a number any input may hold).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from data_tools.schema import DataError

BAD_INPUT = 2  # argparse's status for a bad command line, and ours for bad input


def open_input(path: Path) -> BinaryIO:
    """The file opened for reading, or a `DataError` naming it when it is missing or a folder."""
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise DataError(str(path), None, "no such file") from None
    except IsADirectoryError:
        raise DataError(str(path), None, "a folder, not a file") from None


def non_finite(value: object, path: str = "") -> str | None:
    """Where (e.g. "meta.num_steps", "predictions[3]") a parsed JSON or YAML value holds NaN or
    an infinity, or None. Python's json reads NaN, Infinity and 1e999 without a word, and
    writes them back as text that is not JSON."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        pairs = ((f"{path}.{key}" if path else str(key), item) for key, item in value.items())
    elif isinstance(value, list):
        pairs = ((f"{path}[{i}]", item) for i, item in enumerate(value))
    else:
        return None
    for inner, item in pairs:
        if isinstance(item, float | dict | list) and (found := non_finite(item, inner)):
            return found
    return None


def error_line(e: Exception) -> str:
    """`error: <message>` on one line: a path error as "path: reason", a message of several
    lines joined (a tool's output is read line by line)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        message = f"{e.filename}: {e.strerror}"
    else:
        message = str(e) or type(e).__name__
    return "error: " + " ".join(part.strip() for part in message.splitlines() if part.strip())


def run_tool(main: Callable[[], object]) -> None:
    """Run a tool's `main`; bad input exits with status 2 and one `error:` line on stderr.
    Other exceptions (bugs) keep their traceback; `SystemExit` (a tool's own exit) passes."""
    try:
        main()
    except (ValueError, OSError) as e:
        print(error_line(e), file=sys.stderr, flush=True)
        raise SystemExit(BAD_INPUT) from None
