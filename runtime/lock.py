"""One run per output: a lock file held with `flock` for the rest of the holder's life, so that
a second trainer (or generation, or pipeline) on an output in use refuses at once, naming the
holder, instead of writing the same checkpoints and parts. The kernel releases the lock when
the holder dies, however it dies, so a lock is never stale; the file is removed at a normal exit.

Only rank 0 holds it. On one node that covers every rank; across nodes the output folder must be
on a shared filesystem anyway (rank 0 alone writes `checkpoints/latest`), and there one holder
is also the only choice that works: a lock per node would refuse the second node's own ranks.
NFS (v3 through lockd, v4 natively) carries `flock` to the server as a whole-file lock, so a run
on another client is refused too; Lustre does so when mounted with `-o flock` (`localflock` sees
only its own node), and where `flock` is not supported at all the run goes on, with a warning.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class InUse(Exception):
    """The lock is held by another process, described in the message."""


class Lock:
    """A held lock; `release` removes the file, then lets go."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self.fd)


def _acquire(path: Path) -> Lock | None:
    """Hold `path` (created if need be, its pid and host written in it); InUse if another process
    holds it; None, with a warning, where the filesystem has no `flock`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {holder[0]} on {holder[1]}" if len(holder) == 2 else "another process"
            raise InUse(f"{who} (lock file {path})") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in UNSUPPORTED:
                raise
            _unsupported(path, e, "runs are not kept apart")
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file between our open and our lock: start over
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return Lock(path, fd)


def hold(path: Path, output: Path) -> None:
    """Rank 0 holds the lock file `path` of `output` until it exits; if another process holds
    it, every rank exits with an error that names `output` and the holder."""
    refused: list[str | None] = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            lock = _acquire(path)
            if lock is not None:
                atexit.register(lock.release)
        except InUse as e:
            refused[0] = str(e)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(refused, src=0)
    if refused[0] is not None:
        raise SystemExit(
            f"error: {output} is in use by {refused[0]}; wait for it to end or stop it"
        )


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the `with` block, waiting (and saying so) while
    another process holds it. The file is never removed: removing it would let two processes
    lock two files. Where the filesystem has no `flock`, goes on unlocked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path}: another process holds it", file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno not in UNSUPPORTED:
                raise
            _unsupported(path, e, "going on")
        yield


def _unsupported(path: Path, error: OSError, consequence: str) -> None:
    print(
        f"warning: cannot lock {path} ({error.strerror}): {consequence}",
        file=sys.stderr,
        flush=True,
    )
