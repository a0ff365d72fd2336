"""What the service refuses or fails at, as :class:`~boride.errors.BorideError` subclasses that
name what a user needs (the session, the template, the component, the path). None of them
knows HTTP: :mod:`boride.server.problems` maps each class to a status and a title, in one
table. Their message is the problem's ``detail``; their ``errors`` its ``data``. Each derives
from the category of :mod:`boride.errors` it belongs to (most are the client's input)."""

from __future__ import annotations

from boride.errors import BorideError, ComponentError, InputError


class SessionError(InputError):
    """About one session (``session_id``)."""

    def __init__(self, session_id: str, message: str) -> None:
        super().__init__(message)
        self.session_id = session_id


class InvalidSessionId(SessionError):
    """Not a session id the server accepts."""


class SessionNotFound(SessionError):
    """No such session (never made, deleted, or expired)."""


class SessionGone(SessionError):
    """The session was deleted while a request worked in it."""


class NoTrace(SessionError):
    """No build of the session was traced (``POST /executor/{id}?trace=true``)."""


class SessionExists(SessionError):
    """A try session whose id is in use already."""


class OtherTemplate(SessionError):
    """The session was made for another template."""

    def __init__(self, session_id: str, template_id: str, asked: str) -> None:
        super().__init__(session_id, f"session {session_id!r} was started for template "
                                     f"{template_id!r}, not {asked!r}")
        self.template_id = template_id
        self.asked = asked


class TooManySessions(BorideError):
    """The server holds as many sessions as it may."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"this server holds at most {limit} sessions; delete finished ones "
                         "(DELETE /executor/{id})")
        self.limit = limit


class TemplateError(InputError):
    """About one template (``template_id``)."""

    def __init__(self, template_id: str, message: str) -> None:
        super().__init__(message)
        self.template_id = template_id


class TemplateUnknown(TemplateError):
    """The registry gives no folder for the template."""


class TemplateNotWarm(TemplateError):
    """The template is not warm here (or was dropped)."""


class NoQuestionServer(TemplateError):
    """The warm template has no running Q&A server."""


class QuestionServerUnknown(TemplateError):
    """Nothing says how to run the template's Q&A server on this runtime."""


class TemplateCannotRun(InputError):
    """Components a template pins that cannot run on this server's runtime."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems, message="Some of the template's components cannot run here")


class UnknownNames(InputError):
    """Processors or plugins of a build that resolve to no version the template pins."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(errors, message="Some processors or plugins cannot be resolved to a "
                         "version pinned in the template")


class RegistryUnavailable(BorideError):
    """The registry could not be asked while resolving a build's names."""

    def __init__(self, errors: list[str], first: str) -> None:
        super().__init__(errors, message=first)


class ResolverNotFound(InputError):
    """No resolver of that id runs here."""

    def __init__(self, resolver_id: str, message: str) -> None:
        super().__init__(message)
        self.resolver_id = resolver_id


class ResolverNotRunning(ResolverNotFound):
    """A merge names a resolver that is not running in the session or its template."""


class UpstreamFailed(ComponentError):
    """A component a request was forwarded to could not be reached."""

    def __init__(self, component: str, message: str, cause: str) -> None:
        super().__init__([cause], message=message)
        self.component = component


class TryRefused(InputError):
    """A try session the server will not make, and why (``path``: what the client sent)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


class MissingPath(TryRefused):
    """A try from a folder without the folder."""


class MissingImage(TryRefused):
    """A try from an image whose template names no blob image."""


class TryDisabled(TryRefused):
    """The server accepts no local paths (no ``--dev-root``)."""


class OutsideDevRoot(TryRefused):
    """A try folder outside ``--dev-root``."""


class InvalidPath(TryRefused):
    """A path that cannot be resolved."""


class NotAFolder(TryRefused):
    """A try path that is not a folder."""
