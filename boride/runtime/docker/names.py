"""What things are called on the engine: the network, the paths components see, the labels
clean-up finds things by, and the names of a session's containers and volumes."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from boride.types import Kind

NETWORK = "cyanprint"
SEEN_TEMPLATE = "/workspace/cyanprint"
SEEN_AREA = "/workspace/area"

LABEL_MANAGED = "boride.managed"
LABEL_SESSION = "boride.session"
LABEL_KIND = "boride.kind"
LABEL_COMPONENT = "boride.component"
LABEL_ROLE = "boride.role"
LABEL_USER = "boride.user"  # a component container's own user, "uid:gid" (found again)
#: A server's sessions (``boride serve``): the name it keeps them under on the engine, and
#: what it needs to take one over again after a restart (:mod:`.kept`)
LABEL_OWNER = "boride.owner"
LABEL_NOTE = "boride.note"

#: Session ids: letters, digits and inner dashes, at most 64 characters (UUIDs, with or
#: without dashes, fit).
SESSION_PATTERN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?")


def validate_session(session: str) -> str:
    """Return ``session`` if it is a valid session id, else raise ``ValueError``."""
    if not isinstance(session, str) or not SESSION_PATTERN.fullmatch(session):
        raise ValueError(f"invalid session id {session!r}: use 1 to 64 letters, digits and "
                         "inner dashes (a UUID, for example)")
    return session


def component_id(name: str) -> str:
    """A component name as it may appear in a container name: dashes dropped, other characters
    Docker refuses dropped too; a short hash keeps two such names apart."""
    plain = name.replace("-", "")
    cid = re.sub(r"[^A-Za-z0-9_.]", "", plain)
    if cid != plain or not cid:
        cid = f"{cid}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return cid


def container_name(kind: Kind, name: str, session: str) -> str:
    return f"cyan-{kind.value}-{component_id(name)}-{session}"


def volume_names(session: str) -> tuple[str, str]:
    """(template volume, area volume) of a session."""
    return f"cyan-template-{session}", f"cyan-area-{session}"


def session_labels(session: str, role: str, kept: Mapping[str, str] | None = None
                   ) -> dict[str, str]:
    """The labels of everything made for ``session`` (a ``role``: component, template, area),
    with ``kept`` (the labels that let a server find the session again, :func:`kept_labels`)."""
    return {**(kept or {}), LABEL_MANAGED: "1", LABEL_SESSION: session, LABEL_ROLE: role}


def kept_labels(note: Mapping[str, str] | None) -> dict[str, str]:
    """The labels carrying a server's ``note`` of a session (its ``owner`` among them), on
    everything made for it; none without a note (a ``boride run``'s session)."""
    if not note or not note.get("owner"):
        return {}
    return {LABEL_OWNER: note["owner"], LABEL_NOTE: json.dumps(dict(note), sort_keys=True)}
