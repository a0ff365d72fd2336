"""Where component names come from: ``user/name[:version]`` → a pinned, runnable component.

Two back ends behind one interface (:class:`Registry`):

* :class:`FileRegistry`, a local YAML file (the embedded default)::

      processors:
        - {ref: demo/upper, version: 1, id: 0b5d6c1e-..., image: local/upper:1,
           command: [python3, upper.py]}
      plugins:   [...]   # same fields
      resolvers: [...]   # same fields
      templates:         # boride's addition: where a template's files are
        - {ref: demo/site, version: 1, id: 7f0c..., path: ./template,
           command: [python3, template.py]}   # optional: the template's Q&A server

  ``command`` is what the local runtime runs and ``path`` a template's folder, both relative to
  the file's folder; ``image`` is for the Docker runtime.

* :class:`HttpRegistry`, a client of the CyanPrint registry's routes
  ``GET {url}/api/v1/Processor/slug/{user}/{name}/versions/{version|latest}`` (and ``Plugin``).
  It knows images, not commands, so its components run on Docker only.

:func:`resolve` turns a reference into one of the versions a template pins, the way the Go
coordinator does: with a version, that version must be pinned; without one, the newest pinned
version (walking down from the registry's latest). Several registries can be chained
(:class:`ChainRegistry`): a file for local commands in front of the CyanPrint registry, say.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from boride import inputs, parallel
from boride.errors import BorideError, InputError, describe
from boride.types import Component, Kind

__all__ = [
    "ChainRegistry",
    "Entry",
    "FileRegistry",
    "HttpRegistry",
    "NotFound",
    "Reference",
    "Registry",
    "RegistryError",
    "RegistryFileError",
    "Unavailable",
    "open_registry",
    "parse_reference",
    "resolve",
]

_SLUG = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9_])?"
REFERENCE = re.compile(rf"(?P<user>{_SLUG})/(?P<name>{_SLUG})(?::(?P<version>[0-9]{{1,9}}))?")
_RESOLVE_BATCH = 8  # versions looked up at once when walking down from the latest


class RegistryError(BorideError):
    """A lookup failed; the message is for the user."""


class NotFound(RegistryError):
    """No such name, version or id (the client's mistake: a 4xx)."""


class Unavailable(RegistryError):
    """The registry could not be asked or answered nonsense (not the client's mistake)."""


class RegistryFileError(RegistryError, InputError):
    """A registry file that cannot be used; every problem is listed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems)
        self.problems = problems


@dataclass(frozen=True)
class Reference:
    user: str
    name: str
    version: int | None = None

    @property
    def ref(self) -> str:
        return f"{self.user}/{self.name}"

    def __str__(self) -> str:
        return self.ref if self.version is None else f"{self.ref}:{self.version}"


def parse_reference(text: str) -> Reference:
    """``user/name`` or ``user/name:version``; ``NotFound`` for anything else."""
    m = REFERENCE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise NotFound(f"invalid reference {text!r}: expected user/name or user/name:version")
    version = m.group("version")
    return Reference(m.group("user"), m.group("name"), int(version) if version else None)


@dataclass(frozen=True)
class Entry:
    """One version of a component as a registry knows it."""

    kind: Kind
    ref: str  # user/name ("" when only the id is known)
    version: int
    id: str  # the version's id: what templates pin
    image: str | None = None
    command: tuple[str, ...] | None = None
    cwd: Path | None = None
    path: Path | None = None  # templates: the folder of the template's files

    @property
    def label(self) -> str:
        return f"{self.ref}:{self.version}" if self.ref else self.id

    def component(self, name: str | None = None) -> Component:
        return Component(name or self.label, self.kind, self.command, self.image, self.cwd)


class Registry(abc.ABC):
    """Look-ups by name and version (``None`` = latest), and by id where the back end can."""

    name: str = "registry"

    @abc.abstractmethod
    async def version(self, kind: Kind, ref: Reference) -> Entry:
        """The entry of ``ref`` (its version, or the latest when it has none).

        ``NotFound`` when there is no such name or version, ``Unavailable`` when the registry
        cannot tell."""

    async def by_id(self, kind: Kind, id_: str) -> Entry | None:
        """The entry with this version id, or None when unknown (or not searchable)."""
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# ---------------------------------------------------------------------------------------------
# The YAML file


class _EntrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: Annotated[str, Field(pattern=rf"^{_SLUG}/{_SLUG}$")]
    version: int = Field(ge=1, le=999_999_999)
    id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    image: str | None = Field(default=None, min_length=1)
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    description: str = ""


class _TemplateSpec(_EntrySpec):
    path: Path


class _FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    processors: list[_EntrySpec] = Field(default_factory=list)
    plugins: list[_EntrySpec] = Field(default_factory=list)
    resolvers: list[_EntrySpec] = Field(default_factory=list)
    templates: list[_TemplateSpec] = Field(default_factory=list)


_GROUPS = (("processors", Kind.PROCESSOR), ("plugins", Kind.PLUGIN),
           ("resolvers", Kind.RESOLVER), ("templates", Kind.TEMPLATE))


class FileRegistry(Registry):
    """A registry read once from a YAML file (see the module docstring)."""

    name = "file"

    def __init__(self, entries: Iterable[Entry] = (), source: str = "(empty)") -> None:
        self.source = source
        self._by_id: dict[tuple[Kind, str], Entry] = {}
        self._by_ref: dict[tuple[Kind, str], dict[int, Entry]] = {}
        for e in entries:
            self._by_id[(e.kind, e.id)] = e
            self._by_ref.setdefault((e.kind, e.ref), {})[e.version] = e

    @classmethod
    def load(cls, path: Path) -> FileRegistry:
        try:
            text = inputs.read_text(path, "registry file")
        except inputs.BoundExceeded as exc:
            raise RegistryFileError([str(exc)]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryFileError([f"{path}: cannot read: {exc}"]) from None
        return cls.parse(text, str(path), path.resolve().parent)

    @classmethod
    def parse(cls, text: str, source: str, base: Path) -> FileRegistry:
        try:
            node = inputs.compose(text, source)  # (JSON too: YAML holds it)
            data = None if node is None else inputs.construct(node)
        except inputs.BoundExceeded as exc:
            raise RegistryFileError([str(exc)]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise RegistryFileError([f"{source}{where}: not valid YAML: "
                                     f"{getattr(exc, 'problem', None) or exc}"]) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RegistryFileError([f"{source}: expected a mapping with processors, plugins, "
                                     f"resolvers and templates, found {type(data).__name__}"])
        try:
            spec = _FileSpec.model_validate(data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(top level)"
                msg = {"extra_forbidden": "unknown field",
                       "missing": "required field is missing"}.get(err["type"], err["msg"])
                problems.append(f"{source}: {where}: {msg}")
            raise RegistryFileError(problems) from None
        entries: list[Entry] = []
        problems = []
        seen_ids: dict[tuple[Kind, str], str] = {}
        seen_versions: set[tuple[Kind, str, int]] = set()
        for group, kind in _GROUPS:
            for i, s in enumerate(getattr(spec, group)):
                where = f"{source}: {group}[{i}]"
                if (kind, s.id) in seen_ids:
                    problems.append(f"{where}: id {s.id!r} is used twice "
                                    f"(also by {seen_ids[(kind, s.id)]})")
                seen_ids[(kind, s.id)] = f"{s.ref}:{s.version}"
                if (kind, s.ref, s.version) in seen_versions:
                    problems.append(f"{where}: {s.ref} version {s.version} is listed twice")
                seen_versions.add((kind, s.ref, s.version))
                folder: Path | None = None
                if isinstance(s, _TemplateSpec):
                    folder = (base / s.path).resolve()
                    if not folder.is_dir():
                        problems.append(f"{where}: path {folder} is not a folder")
                entries.append(Entry(kind, s.ref, s.version, s.id, s.image,
                                     tuple(s.command) if s.command else None, base, folder))
        if problems:
            raise RegistryFileError(problems)
        return cls(entries, source)

    def entries(self, kind: Kind) -> list[Entry]:
        return [e for (k, _), e in self._by_id.items() if k is kind]

    async def version(self, kind: Kind, ref: Reference) -> Entry:
        versions = self._by_ref.get((kind, ref.ref))
        if not versions:
            raise NotFound(f"unknown {kind.value} {ref.ref!r} (not in {self.source})")
        if ref.version is None:
            return versions[max(versions)]
        entry = versions.get(ref.version)
        if entry is None:
            raise NotFound(f"{kind.value} {ref.ref!r} has no version {ref.version} "
                           f"(known: {', '.join(str(v) for v in sorted(versions))})")
        return entry

    async def by_id(self, kind: Kind, id_: str) -> Entry | None:
        return self._by_id.get((kind, id_))


# ---------------------------------------------------------------------------------------------
# The CyanPrint registry over HTTP


class _Principal(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    version: int
    dockerReference: str = ""
    dockerTag: str = ""
    dockerSha: str = ""


class _VersionRes(BaseModel):
    model_config = ConfigDict(extra="ignore")

    principal: _Principal


_ROUTES = {Kind.PROCESSOR: "Processor", Kind.PLUGIN: "Plugin", Kind.TEMPLATE: "Template"}


class HttpRegistry(Registry):
    """Client of the CyanPrint registry; answers for fixed versions are cached (immutable)."""

    name = "http"

    def __init__(self, url: str, *, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.url, timeout=timeout,
                                         transport=transport, follow_redirects=True)
        self._cache: dict[tuple[Kind, str, int], Entry] = {}

    async def version(self, kind: Kind, ref: Reference) -> Entry:
        if ref.version is not None:
            cached = self._cache.get((kind, ref.ref, ref.version))
            if cached is not None:
                return cached
        route = _ROUTES.get(kind)
        if route is None:
            raise NotFound(f"the CyanPrint registry has no route for {kind.value}s")
        which = "latest" if ref.version is None else str(ref.version)
        path = (f"/api/v1/{route}/slug/{quote(ref.user, safe='')}/{quote(ref.name, safe='')}"
                f"/versions/{which}")
        try:
            response = await self._client.get(path)
        except httpx.HTTPError as exc:
            raise Unavailable(f"registry {self.url} cannot be reached: "
                              f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        if response.status_code == 404:
            what = f"{ref.ref!r}" if ref.version is None else f"{ref.ref!r} version {ref.version}"
            raise NotFound(f"unknown {kind.value} {what} (registry {self.url} answered 404)")
        if response.status_code != 200:
            raise Unavailable(f"registry {self.url} answered HTTP {response.status_code} "
                              f"for {path}: {response.text[:200]!r}")
        try:
            principal = _VersionRes.model_validate(response.json()).principal
        except (ValueError, ValidationError) as exc:
            raise Unavailable(f"registry {self.url} answered an unusable body for {path}: "
                              f"{str(exc)[:300]}") from None
        image = None
        if principal.dockerReference:
            if principal.dockerTag:
                image = f"{principal.dockerReference}:{principal.dockerTag}"
            elif principal.dockerSha:
                image = f"{principal.dockerReference}@sha256:{principal.dockerSha}"
            else:
                image = principal.dockerReference
        entry = Entry(kind, ref.ref, principal.version, principal.id, image)
        self._cache[(kind, ref.ref, entry.version)] = entry
        return entry

    async def aclose(self) -> None:
        await self._client.aclose()


class ChainRegistry(Registry):
    """Asks each registry in turn; the first that knows the name (or id) answers."""

    name = "chain"

    def __init__(self, registries: Sequence[Registry]) -> None:
        self.registries = list(registries)

    async def version(self, kind: Kind, ref: Reference) -> Entry:
        errors: list[RegistryError] = []
        for r in self.registries:
            try:
                return await r.version(kind, ref)
            except RegistryError as exc:
                errors.append(exc)
        if not errors:
            raise NotFound(f"unknown {kind.value} {ref.ref!r}: no registry is configured")
        message = "; ".join(str(e) for e in errors)
        if any(isinstance(e, Unavailable) for e in errors):
            raise Unavailable(message)  # the registry that is down may know the name
        raise NotFound(message)

    async def by_id(self, kind: Kind, id_: str) -> Entry | None:
        for r in self.registries:
            found = await r.by_id(kind, id_)
            if found is not None:
                return found
        return None

    async def aclose(self) -> None:
        for r in self.registries:
            await r.aclose()


def open_registry(sources: Sequence[str | Path]) -> Registry:
    """A registry from ``--registry`` values: ``http(s)://...`` URLs and YAML file paths."""
    registries: list[Registry] = []
    for source in sources:
        text = str(source)
        if text.startswith(("http://", "https://")):
            registries.append(HttpRegistry(text))
        else:
            registries.append(FileRegistry.load(Path(text)))
    if len(registries) == 1:
        return registries[0]
    return ChainRegistry(registries) if registries else FileRegistry()


# ---------------------------------------------------------------------------------------------
# Resolution against a template's pinned versions


async def resolve(registry: Registry, kind: Kind, reference: str, pinned: Iterable[str],
                  *, batch: int = _RESOLVE_BATCH) -> Entry:
    """The entry ``reference`` names among the version ids a template ``pinned``.

    With a version: that version, which must be pinned. Without: the newest pinned version,
    looking versions up from the registry's latest downwards, ``batch`` at a time in parallel.
    """
    ref = parse_reference(reference)
    allowed = set(pinned)
    if ref.version is not None:
        entry = await registry.version(kind, ref)
        if entry.id not in allowed:
            raise NotFound(f"{kind.value} {reference!r} (id {entry.id}) is not one of the "
                           "versions pinned in the template")
        return entry
    latest = await registry.version(kind, ref)
    if latest.id in allowed:
        return latest

    async def lookup(version: int) -> Entry | None:
        try:
            return await registry.version(kind, Reference(ref.user, ref.name, version))
        except NotFound:
            return None  # a withdrawn version: keep walking down

    top = latest.version - 1
    while top >= 1:
        versions = list(range(top, max(top - batch, 0), -1))
        report = await parallel.run(lookup, versions, limit=batch)
        failed = report.failures
        if failed:
            error = failed[0].error
            if isinstance(error, RegistryError):
                raise error
            raise Unavailable(f"looking up {reference!r}: {describe(error)}")
        for found in report.values:  # newest first
            if found is not None and found.id in allowed:
                return found
        top -= batch
    raise NotFound(f"{kind.value} {reference!r}: none of its versions (1 to {latest.version}) "
                   "is pinned in the template")


def location(registry: Registry) -> str:
    """One line naming where names are looked up, for logs."""
    if isinstance(registry, ChainRegistry):
        return " then ".join(location(r) for r in registry.registries)
    if isinstance(registry, HttpRegistry):
        return registry.url
    if isinstance(registry, FileRegistry):
        return registry.source
    return registry.name
