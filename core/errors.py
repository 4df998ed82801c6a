"""One error policy for every package: an error the user can fix is a `UserError`.

Its message is one line that says what was wrong and what to do; a command-line tool prints that
line ("Error: ...") and exits non-zero, with no traceback (core.cli catches it once, at the tool's
edge). Libraries raise subclasses of it (GenerationError, DatasetError, CheckpointError, ...);
some keep a builtin base as well (LockHeldError is an OSError, DirectionError a ValueError) so
that callers which catch the builtin keep working. Anything that is not a UserError is a bug or
the environment's, and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError", "first_line"]


class UserError(Exception):
    """An error the user can fix; str() is the one line a command-line tool prints."""


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its class name when the message is empty: for
    quoting another library's error inside a one-line message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
