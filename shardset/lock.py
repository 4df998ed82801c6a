"""Advisory locks on a lock file (`fcntl.flock`) that name their holder: who writes a shard set,
who trains into a run folder.

A lock is taken without waiting: when another process holds it, `LockHeldError` says at once
which pid on which host holds it, read from the lock file, where every holder writes one JSON
line (pid, host, since, mode) after locking. An exclusive holder empties the file first; shared
holders append.

What flock guarantees:
- It is advisory: it stops only processes that take the same lock (every ShardSetWriter, and
  train-unet for its run folder); `cp`, `rm` or a text editor are not stopped.
- It excludes other processes. Within one process the holders of one lock file share the
  process's lock (one open file, counted), as POSIX record locks do: a process cannot conflict
  with itself, so a writer left open by a failed call in a long-lived process (a Ray worker, a
  notebook, a test session) does not block the next one. A forked child takes its own lock.
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
import threading
import weakref
from pathlib import Path

from core.errors import UserError


class LockHeldError(UserError, OSError):
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


class _Held:
    """This process's lock on one lock file: the open file, its mode, how many FileLocks use it."""

    def __init__(self, fd: int, shared: bool):
        self.fd, self.shared, self.pid, self.count = fd, shared, os.getpid(), 1


_HELD: dict[tuple[int, int], _Held] = {}  # (st_dev, st_ino) of a lock file -> this process's lock
_GUARD = threading.Lock()


def _drop(key: tuple[int, int], held: _Held) -> None:
    """One user of `held` is done; the last one closes the file, which releases the lock."""
    with _GUARD:
        held.count -= 1
        if held.count == 0:
            os.close(held.fd)
            if _HELD.get(key) is held:
                del _HELD[key]


def _flock(fd: int, shared: bool) -> bool:
    """Take (or convert to) the lock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _note(fd: int, shared: bool, truncate: bool) -> None:
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "mode": "shared" if shared else "exclusive",
                       "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds")})
    if truncate:
        os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, (line + "\n").encode())


class FileLock:
    """`flock` on `path`, exclusive or shared, taken at once or never (LockHeldError).

    `what` names the locked thing in messages ("shard set out/NAME.json"); `hint` ends the message
    when the lock is held. The lock is released by `release()`, when the object is garbage
    collected, or when the process ends (see the module docstring for holders in one process).
    """

    def __init__(self, path: str | os.PathLike, *, shared: bool = False, what: str = "", hint: str = ""):
        self.path = Path(path)
        self._what, self._hint = what or str(self.path), hint
        with _GUARD:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            held = _HELD.get(key)
            if held is not None and held.pid == os.getpid():
                os.close(fd)  # this process holds it already: share its open file
                if held.shared and not shared:
                    if not _flock(held.fd, shared=False):
                        # Linux drops the old lock before a conversion that then fails: take it back
                        _flock(held.fd, shared=True)
                        self._refuse()
                    held.shared = False
                    _note(held.fd, False, truncate=True)
                held.count += 1
            else:
                try:
                    if not _flock(fd, shared):
                        self._refuse()
                except BaseException:
                    os.close(fd)
                    raise
                held = _HELD[key] = _Held(fd, shared)
                _note(fd, shared, truncate=not shared)
        self._held = held
        self._closer = weakref.finalize(self, _drop, key, held)

    def _refuse(self) -> None:
        holders = describe_holders(self.path.read_text(errors="replace"))
        raise LockHeldError(f"{self._what} is in use: {holders} holds {self.path.name}"
                            + (f"; {self._hint}" if self._hint else ""))

    @property
    def shared(self) -> bool:
        return self._held.shared

    def share(self) -> None:
        """Turn this process's exclusive lock into a shared one (others may then join with
        shared=True).

        flock converts by dropping the lock and taking the new one; another process could take it
        in between, and then this raises LockHeldError instead of sharing."""
        with _GUARD:
            if self._held.shared:
                return
            if not _flock(self._held.fd, shared=True):
                self._refuse()
            self._held.shared = True
            _note(self._held.fd, True, truncate=True)

    @property
    def held(self) -> bool:
        return self._closer.alive

    def release(self) -> None:
        self._closer()  # idempotent: the last user in this process closes the file

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
