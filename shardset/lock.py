"""Advisory locks on a lock file (`fcntl.flock`) that name their holder: who writes a shard set,
who trains into a run folder.

A lock is taken without waiting: when another process holds it, `LockHeldError` says at once
which pid on which host holds it, read from the lock file, where every holder writes one JSON
line (pid, host, since, mode) after locking. An exclusive holder empties the file first; shared
holders append.

What flock guarantees:
- It is advisory: it stops only processes that take the same lock (every ShardSetWriter, and
  train-unet for its run folder); `cp`, `rm` or a text editor are not stopped.
- A lock belongs to the open file: closing it, or the end of the process (kill -9 included),
  releases it, so there is no stale lock to clean up. The lock file itself stays (a few bytes).
- Network filesystems: on Linux, flock on NFS is emulated with POSIX byte-range locks, which
  hold across clients when the server runs a lock manager (NFSv4, or NFSv3 with lockd). Some
  mounts (NFS with `nolock` or `local_lock`, many CIFS/SMB and FUSE filesystems) keep locks local
  to one machine or refuse them; there two writers on different machines are not stopped. A
  filesystem that refuses locks makes `acquire` raise OSError, which names the file.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import weakref
from pathlib import Path


class LockHeldError(OSError):
    """Another process holds the lock; the message names it (pid, host) and what to do."""

    def __str__(self) -> str:  # OSError's default adds errno noise
        return str(self.args[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def describe_holders(text: str) -> str:
    """'pid 123 on host h (since ...)' for the holders a lock file names; dead local pids are left
    out (shared holders append lines and never remove theirs)."""
    host = socket.gethostname()
    holders = []
    for line in text.splitlines()[-64:]:
        try:
            h = json.loads(line)
            pid = int(h["pid"])
        except (ValueError, KeyError, TypeError):
            continue
        if h.get("host") == host and not _alive(pid):
            continue
        holders.append(f"pid {pid} on host {h.get('host', '?')} (since {h.get('since', '?')})")
    if not holders:
        return "another process (it has not written its pid yet)"
    if len(holders) > 3:
        return ", ".join(holders[:3]) + f" and {len(holders) - 3} more"
    return ", ".join(holders)


class FileLock:
    """`flock` on `path`, exclusive or shared, taken at once or never (LockHeldError).

    `what` names the locked thing in messages ("shard set out/NAME.json"); `hint` ends the message
    when the lock is held. The lock is released by `release()`, when the object is garbage
    collected, or when the process ends.
    """

    def __init__(self, path: str | os.PathLike, *, shared: bool = False, what: str = "", hint: str = ""):
        self.path = Path(path)
        self.shared = shared
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        self._closer = weakref.finalize(self, os.close, self._fd)
        try:
            fcntl.flock(self._fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            self.release()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holders = describe_holders(self.path.read_text(errors="replace"))
                raise LockHeldError(f"{what or self.path} is in use: {holders} holds {self.path.name}"
                                    + (f"; {hint}" if hint else "")) from None
            raise
        self._note(truncate=not shared)

    def _note(self, truncate: bool) -> None:
        line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "mode": "shared" if self.shared
                           else "exclusive", "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")})
        if truncate:
            os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_END)
        os.write(self._fd, (line + "\n").encode())

    def share(self) -> None:
        """Turn an exclusive lock into a shared one (others may then join with shared=True).

        flock converts by dropping the lock and taking the new one; another process could take it
        in between, and then this raises LockHeldError instead of sharing."""
        if self.shared:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            holders = describe_holders(self.path.read_text(errors="replace"))
            self.release()
            raise LockHeldError(f"{self.path} was taken by {holders} while this process shared it") from None
        self.shared = True
        self._note(truncate=True)

    @property
    def held(self) -> bool:
        return self._closer.alive

    def release(self) -> None:
        self._closer()  # closing the file releases the lock; idempotent

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
