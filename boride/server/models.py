"""The JSON bodies of the Go coordinator's API, with its field names (note the mix of cases).

Requests are lenient the way Go's ``encoding/json`` is: unknown fields are ignored and ``null``
lists count as empty. Where the Go coordinator and DESIGN.md disagree on a name (the try
request), both spellings are accepted.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field

from boride.model import Glob
from boride.pipeline import ProtocolGlob

#: Session ids: letters, digits and inner dashes, at most 64 characters (UUIDs with or without
#: dashes fit). The same rule as the Docker runtime's, so a session id is always a valid
#: container and volume name suffix.
SESSION_ID = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?$"
SESSION_RE = re.compile(SESSION_ID)
#: Prefix of the sessions the server makes for itself (shared template components).
RESERVED_PREFIX = "boride-"
#: Ids of templates and components as they appear in URLs.
CYAN_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


def _none_as_empty(value: Any) -> Any:
    return [] if value is None else value


def _none_as_blank(value: Any) -> Any:
    return "" if value is None else value


Text = Annotated[str, BeforeValidator(_none_as_blank)]
#: A file-system path from a client: no NUL byte, a sane length.
PathText = Annotated[str, BeforeValidator(_none_as_blank),
                     Field(max_length=4096, pattern=r"^[^\x00]*$")]


class _Go(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def image_name(reference: str, tag: str) -> str | None:
    """``reference:tag`` (just ``reference`` without a tag), None without a reference."""
    if not reference:
        return None
    return f"{reference}:{tag}" if tag else reference


class PropertyRes(_Go):
    blobDockerReference: Text = ""
    blobDockerTag: Text = ""
    templateDockerReference: Text = ""
    templateDockerTag: Text = ""

    @property
    def blob_image(self) -> str | None:
        """The image holding the template's files."""
        return image_name(self.blobDockerReference, self.blobDockerTag)


class _Version(_Go):
    """A version in the registry: its id, number, date and description."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    version: int = 0
    createdAt: Text = ""
    description: Text = ""


class TemplateVersionPrincipalRes(_Version):
    properties: PropertyRes | None = None


class TemplatePrincipalRes(_Go):
    id: Text = ""
    name: Text = ""
    project: Text = ""
    source: Text = ""
    email: Text = ""
    tags: Annotated[list[str], BeforeValidator(_none_as_empty)] = Field(default_factory=list)
    description: Text = ""
    readme: Text = ""
    userId: Text = ""


class ComponentRes(_Version):
    """A processor or plugin version pinned by a template."""

    dockerReference: Text = ""
    dockerTag: Text = ""

    @property
    def image(self) -> str | None:
        return image_name(self.dockerReference, self.dockerTag)


class ResolverRes(ComponentRes):
    config: Any = None
    files: Annotated[list[str], BeforeValidator(_none_as_empty)] = Field(default_factory=list)


_Components = Annotated[list[ComponentRes], BeforeValidator(_none_as_empty)]
_Resolvers = Annotated[list[ResolverRes], BeforeValidator(_none_as_empty)]
_Principals = Annotated[list[TemplateVersionPrincipalRes], BeforeValidator(_none_as_empty)]


class TemplateVersionRes(_Go):
    """A template version as the CyanPrint registry describes it."""

    principal: TemplateVersionPrincipalRes
    template: TemplatePrincipalRes | None = None
    processors: _Components = Field(default_factory=list)
    plugins: _Components = Field(default_factory=list)
    templates: _Principals = Field(default_factory=list)
    resolvers: _Resolvers = Field(default_factory=list)


class VolumeRef(_Go):
    cyan_id: Text = ""
    session_id: Text = ""


class MergerReq(_Go):
    merger_id: Text = ""


class StartExecutorReq(_Go):
    session_id: str
    template: TemplateVersionRes
    write_vol_reference: VolumeRef | None = None
    merger: MergerReq | None = None


class GlobReq(_Go):
    root: str | None = None
    glob: Annotated[str, Field(min_length=1)]
    exclude: Annotated[list[str], BeforeValidator(_none_as_empty)] = Field(default_factory=list)
    type: Literal["template", "copy"] = "template"

    def protocol(self) -> ProtocolGlob:
        """As the component protocol sends it: the same as a pipeline file's glob."""
        return Glob(**self.model_dump()).protocol()


class CyanProcessorReq(_Go):
    name: str
    config: Any = None
    files: Annotated[list[GlobReq], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list)


class CyanPluginReq(_Go):
    name: str
    config: Any = None


class CyanReq(_Go):
    processors: Annotated[list[CyanProcessorReq], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list)
    plugins: Annotated[list[CyanPluginReq], BeforeValidator(_none_as_empty)] = Field(
        default_factory=list)


class BuildReq(_Go):
    template: TemplateVersionRes
    cyan: CyanReq
    merger_id: Text = ""


class ImageRef(_Go):
    reference: Text = ""
    tag: Text = ""


class TryReq(_Go):
    session_id: str = Field(validation_alias=AliasChoices("sessionId", "session_id"))
    local_template_id: Annotated[str, Field(min_length=1, max_length=128, pattern=CYAN_ID)] = \
        Field(validation_alias=AliasChoices("localTemplateId", "local_template_id"))
    source: Literal["image", "path"] = "image"
    image_ref: ImageRef | None = Field(default=None,
                                       validation_alias=AliasChoices("imageRef", "image_ref"))
    path: PathText = ""
    template: TemplateVersionRes
    merger_id: Text = Field(default="", validation_alias=AliasChoices("mergerId", "merger_id"))


class ZipReq(_Go):
    target_dir: PathText = Field(min_length=1,
                            validation_alias=AliasChoices("target_dir", "targetDir", "TargetDir"))


class MergeReq(_Go):
    from_dirs: Annotated[list[PathText], BeforeValidator(_none_as_empty)] = Field(
        validation_alias=AliasChoices("from_dirs", "fromDirs", "FromDirs"))
    to_dir: PathText = Field(min_length=1,
                             validation_alias=AliasChoices("to_dir", "toDir", "ToDir"))
    template: TemplateVersionRes | None = None


# ---------------------------------------------------------------------------------------------
# Responses


class StatusRes(BaseModel):
    status: str = "OK"


class WorkerRes(BaseModel):
    """(boride) ``GET /worker``: what this server holds, for ``boride front``."""

    node: str = Field(description="The machine its components run on: on Docker the engine's "
                                  "swarm node id (else the engine's id), else the host name")
    sessions: list[str] = Field(description="Ids of the open sessions")
    sessions_active: int = Field(description="How many sessions are open")
    sessions_total: int = Field(description="Sessions made since the server started")
    templates: list[str] = Field(description="Templates whose shared components run here")
    resolvers: list[str] = Field(description="Resolver version ids running here")


class WarmRes(BaseModel):
    session_id: str
    vol_ref: VolumeRef


class TryRes(BaseModel):
    """The Go coordinator's ``TrySetupRes`` (camelCase: ``blobVolume``, the one field the
    CyanPrint CLI requires, ``sessionId``, ``sessionVolume``), and the snake-case names boride
    answered before, for its older clients."""

    sessionId: str
    blobVolume: VolumeRef
    sessionVolume: VolumeRef
    session_id: str
    blob_volume: VolumeRef
    session_volume: VolumeRef

    @classmethod
    def of(cls, session_id: str, local_template_id: str) -> TryRes:
        blob = VolumeRef(cyan_id=local_template_id, session_id="")
        own = VolumeRef(cyan_id=local_template_id, session_id=session_id)
        return cls(sessionId=session_id, blobVolume=blob, sessionVolume=own,
                   session_id=session_id, blob_volume=blob, session_volume=own)


class CleanupRes(BaseModel):
    """``DELETE /cleanup`` (what ``cyanprint daemon stop`` calls), as the CyanPrint CLI reads
    it: ``status`` "OK" and an empty ``error`` when everything was removed; else ``status``
    "ERROR" and ``error`` saying what is left."""

    status: str = "OK"
    error: str = ""
    containers_removed: list[str] = Field(default_factory=list)
    volumes_removed: list[str] = Field(default_factory=list)
    sessions_removed: list[str] = Field(default_factory=list)
    containers_count: int = 0
    volumes_count: int = 0
    sessions_count: int = 0


class Problem(BaseModel):
    """RFC 7807 problem details, as the Go coordinator writes them."""

    title: str
    status: int
    detail: str
    type: str
    trace_id: str | None = None
    traceId: str | None = None  # what the CyanPrint CLI reads
    data: list[str] = Field(default_factory=list)  # every message: the CLI shows these
