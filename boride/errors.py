"""The one tree of errors boride raises, and the one way to describe an error to a user.

Every exception class of boride derives from :class:`BorideError`. Each carries its messages
itself: ``errors`` (one line per problem, each naming what the user needs: the component, the
path, the cause), and ``str()`` of it is the message for the user (those lines, or a headline
over a bounded part of them). Errors are raised once, where they are found, and not wrapped
again on their way up: a caller adds context only where it formats them for its user.

A few category bases say whose the failure is:

* :class:`InputError` — the user's input (a pipeline file, a registry file, a request, a
  template folder): the user changes it;
* :class:`ComponentError` — a component (it did not start, did not answer, answered wrong):
  its author's to mend, with its own words in the message;
* :class:`RuntimeFailure` — the runtime (the Docker engine, the sandbox, a lost worker);
* :class:`AreaFailure` — a session's work area (its files, on Docker its helper).

Timeouts also derive from :class:`TimeoutError`, unsafe paths from :class:`ValueError`, so
callers may catch either. The HTTP edge maps these classes to problem details in one table
(``boride.server.problems``); the command line describes them with :func:`describe`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AreaFailure", "BorideError", "BorideTimeout", "ComponentError", "InputError",
           "RuntimeFailure", "describe", "shown"]


class BorideError(Exception):
    """An error boride raises on purpose: ``errors`` are its lines for the user (one per
    problem), ``str()`` its message (``message`` when given, else the lines)."""

    def __init__(self, errors: str | Sequence[str] = (), *, message: str | None = None
                 ) -> None:
        self.errors: list[str] = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors) if message is None else message)


class InputError(BorideError):
    """The user's input cannot be used; the message says what to change."""


class ComponentError(BorideError):
    """A component failed; the message has the component's own words when it said any."""


class RuntimeFailure(BorideError):
    """A runtime could not do what was asked; the message is for the user."""


class AreaFailure(BorideError):
    """A work area could not do what was asked; the message is for the user."""


class BorideTimeout(BorideError, TimeoutError):
    """Something took longer than it was allowed to."""


def shown(headline: str, errors: Sequence[str], limit: int, bullet: str = "\n  - ") -> str:
    """``headline`` over at most ``limit`` of ``errors`` (the rest counted): a message that
    stays a few lines long whatever the number of problems."""
    if not headline:
        text = "\n".join(errors[:limit])
        return text + (f"\n... and {len(errors) - limit} more" if len(errors) > limit else "")
    text = headline + bullet + bullet.join(errors[:limit])
    return text + (f"\n  ... and {len(errors) - limit} more" if len(errors) > limit else "")


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
