"""Run a function in a forked child process, so that the memory it passes through leaves with
the child: memory a process has freed is seldom given back to the system (the allocators keep
their fragmented heaps), so a rank that tokenized a dataset itself would hold several times the
tokens' size for the rest of the run. The child shares the parent's state as forked (no
pickling of the function), and touches no accelerator or process group."""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable


def run_forked(fn: Callable[[], None]) -> None:
    """Call `fn` in a forked child and wait for it; its exception, if any, is raised here (as
    itself when it survives pickling, else as a RuntimeError with its message)."""
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)

    def child() -> None:
        try:
            fn()
            writer.send(None)
        except BaseException as e:
            try:
                pickle.loads(pickle.dumps(e))
                writer.send(e)
            except Exception:
                writer.send(RuntimeError(f"{type(e).__name__}: {e}"))

    process = context.Process(target=child, daemon=True)
    process.start()
    writer.close()
    try:
        error = reader.recv()
    except EOFError:  # killed, or crashed in native code
        error = RuntimeError("the child process ended without a word")
    except BaseException:  # interrupted here: the child goes too
        process.terminate()
        raise
    finally:
        process.join()
        reader.close()
    if error is not None:
        raise error
