"""The one base of every error boride raises, and the one way to describe an error to a user.

Every exception class of boride derives from :class:`BorideError`; its message is written for
the user and names what they need (the component, the path, the cause). Timeouts also derive
from :class:`TimeoutError`, unsafe paths from :class:`ValueError`, so callers may catch either.
The HTTP edge maps these classes to problem details in one table (``boride.server.problems``);
the command line describes them with :func:`describe`.
"""

from __future__ import annotations

__all__ = ["BorideError", "BorideTimeout", "describe"]


class BorideError(Exception):
    """An error boride raises on purpose; ``str()`` of it is the message for the user."""


class BorideTimeout(BorideError, TimeoutError):
    """Something took longer than it was allowed to."""


def describe(error: BaseException | None) -> str:
    """One description of an error for a user, never empty: boride's own errors as they are,
    file-system errors with their path, anything else (a bug) with its type."""
    if error is None:
        return "no error"
    if isinstance(error, BorideError) and str(error):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
