"""Atomic file writes, shared by every package: a reader (or a crash) never sees half a file.

The bytes go to a unique temporary name beside the target, are fsynced, and replace the target with
os.replace; the folder is fsynced too, so the rename survives a power cut. The temporary file is
created with mode 0o666 so the umask applies (mkstemp would leave results readable by the owner only)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in `folder` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` atomically (temporary name, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    """atomic_write_bytes for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)
