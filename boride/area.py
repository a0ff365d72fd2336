"""A session's work area: the folders components write, the merge, the result.

The pipeline never touches the area's files itself; it asks the session's :class:`Area`. Paths
are strings *as components see them* (``writeDir``, ``outputDir``, ``directory``): on the local
runtime those are the host's own paths (:class:`HostArea`); on Docker the files live in engine
volumes and the area's work is done by a helper container next to the components
(:mod:`boride.runtime.docker.helper`), which runs a :class:`HostArea` of its own.

Components may be changing the area at any time (an API session keeps them running between
builds): every walk goes through directory descriptors (:mod:`boride.fsutil`), and every
folder a component names must really lie in the area when it is opened.
"""

from __future__ import annotations

import abc
import os
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path, PurePosixPath

from boride import aio, archive, fsutil, output
from boride import merge as merging
from boride.errors import AreaFailure as AreaFailure  # (re-exported: areas raise it)
from boride.errors import describe
from boride.merge import ResolveFn, ResolverRule

__all__ = ["Area", "AreaFailure", "HostArea", "inside", "remove_new"]

#: what the archive of a result is compressed with when it is only a transport (``--out``)
TRANSPORT_LEVEL = 1


def inside(root: str, returned: str) -> str:
    """``returned`` (a path a component gave) as a normalised absolute path in the area
    ``root``; ``ValueError`` saying why not. Only the words are checked here: where the path
    really leads is checked when it is opened."""
    pure = PurePosixPath(returned)
    if not pure.is_absolute():
        raise ValueError(f"{returned!r} is not an absolute path")
    if ".." in pure.parts:
        raise ValueError(f"{returned!r} contains '..'")
    try:
        pure.relative_to(root)
    except ValueError:
        raise ValueError(f"{returned!r} is outside the session's work area {root}") from None
    return str(pure)


class Area(abc.ABC):
    """The work area of one session. ``root`` and ``template`` are the area and the template
    as components see them; ``guards_template`` tells that processors cannot change the
    template at all (a read-only mount), so the pipeline need not watch it."""

    root: str
    template: str
    guards_template: bool = False
    #: whether ``write_folder(move=True)`` can rename the result out (the area is a folder
    #: of boride's own machine)
    moves_out: bool = False

    @abc.abstractmethod
    async def new_dir(self, *, private: bool = False,
                      owner: tuple[int, int] | None = None) -> str:
        """A fresh folder in the area (mode 0700), for a component to write in: owned by
        ``owner`` (the component's own user, :attr:`Instance.user`), else by the components'
        user; with ``private``, closed to components until handed over (a merge target)."""

    @abc.abstractmethod
    async def hand_over(self, folder: str, owner: tuple[int, int] | None = None) -> None:
        """Give ``folder`` (and everything in it) to ``owner``, else to the components' user:
        the tree a plugin edits in place."""

    async def take_back(self, folder: str) -> None:  # noqa: B027 - optional hook
        """A component answered with ``folder`` (its writeDir, a plugin's tree): make it and
        everything in it boride's again (0700 at the top), so that the component cannot
        change it by path any more, nor any other reach it. By default nothing (an area
        whose components share boride's user)."""

    def check(self, returned: str) -> str:
        """A folder a component returned, if it lies in the area (:func:`inside`)."""
        return inside(self.root, returned)

    @abc.abstractmethod
    async def merge(self, outputs: Sequence[str], target: str,
                    rules: Sequence[ResolverRule], resolve: ResolveFn, *,
                    limit: int) -> None:
        """:func:`boride.merge.merge` in the area (:class:`~boride.MergeError`)."""

    @abc.abstractmethod
    async def archive(self, tree: str, *, copy_links: bool = False,
                      level: int = archive.DEFAULT_LEVEL) -> AsyncIterator[bytes]:
        """``tree`` as ``.tar.gz`` chunks, produced while iterating (leaving the iteration
        early stops the work); :class:`~boride.archive.ArchiveError` now when it cannot be
        archived (links leading out, special files)."""

    @abc.abstractmethod
    async def unpack(self, chunks: AsyncIterator[bytes]) -> str:
        """A fresh folder in the area holding the ``.tar.gz`` stream ``chunks`` (an output
        from the cache), unpacked with :func:`boride.output.unpack_folder`'s rules and closed to
        components (as ``new_dir(private=True)``); :class:`~boride.output.OutputError` when an
        entry cannot be unpacked."""

    async def write_archive(self, tree: str, dest: Path) -> None:
        """Write ``tree``'s ``.tar.gz`` to ``dest`` (replaced only once complete)."""
        await _write_chunks(await self.archive(tree), dest)

    async def write_folder(self, tree: str, out: Path, *, replace: bool,
                           move: bool = False) -> Path:
        """Write ``tree`` to the folder ``out`` (:func:`boride.output.write_folder`'s rules);
        with ``move``, ``tree`` may be used up (no component can change it any more): where it
        can, the area renames it into place (:func:`boride.output.move_folder`)."""
        chunks = await self.archive(tree, level=TRANSPORT_LEVEL)
        return await output.unpack_folder(chunks, out, replace=replace)

    @abc.abstractmethod
    async def names(self) -> set[str]:
        """The names in the area's top folder."""

    @abc.abstractmethod
    async def remove_new(self, before: set[str]) -> list[str]:
        """Remove what is in the area but not in ``before``; what could not be removed."""

    @abc.abstractmethod
    async def full(self) -> bool:
        """Whether the area's file system is (nearly) full."""

    async def template_print(self) -> dict[str, tuple[int, int, int, int]]:
        """A fingerprint of the template (see :func:`fingerprint`); empty when
        ``guards_template``."""
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the area holds (connections)."""


async def _write_chunks(chunks: AsyncIterator[bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            async for chunk in chunks:
                await aio.to_thread(f.write, chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:  # left early: stop the producer
            await aclose()


class HostArea(Area):
    """An area that is a folder of this machine: ``root`` (made private to boride), with
    the template at ``template``. ``owner`` (uid, gid): whom folders go to for components to
    write in when no owner of their own is given, when components run as another user than
    boride (None: nothing to do). ``own_users``: components run as users of their own
    (:class:`~boride.runtime.base.UserPool`): what one answered is taken back
    (:meth:`take_back`)."""

    moves_out = True

    def __init__(self, root: Path, template: Path, owner: tuple[int, int] | None = None,
                 *, guards_template: bool = False, own_users: bool = False) -> None:
        self.root_path = root
        self.template_path = template
        self.root = str(root)
        self.template = str(template)
        self.owner = owner
        self.own_users = own_users
        self.guards_template = guards_template

    def path(self, folder: str) -> Path:
        return Path(inside(self.root, folder))

    async def new_dir(self, *, private: bool = False,
                      owner: tuple[int, int] | None = None) -> str:
        path = self.root_path / uuid.uuid4().hex
        path.mkdir(0o700)  # private until handed over: never open to everyone
        if not private:
            await self.hand_over(str(path), owner)
        return str(path)

    async def hand_over(self, folder: str, owner: tuple[int, int] | None = None) -> None:
        owner = owner or self.owner
        if owner is not None:
            await aio.to_thread(give_tree, self.path(folder), self.root_path, owner)

    async def take_back(self, folder: str) -> None:
        if self.own_users:
            await aio.to_thread(take_tree, self.path(folder), self.root_path)

    def check(self, returned: str) -> str:
        """As :meth:`Area.check`, and where it leads (through links) must be in the area too."""
        path = Path(inside(self.root, returned))
        resolved = path.resolve()
        area = self.root_path.resolve()
        if resolved != area and area not in resolved.parents:
            raise ValueError(f"{returned!r} leads outside the session's work area")
        return str(resolved)

    async def merge(self, outputs: Sequence[str], target: str,
                    rules: Sequence[ResolverRule], resolve: ResolveFn, *,
                    limit: int) -> None:
        # the outputs are the build's own, thrown away after the merge: used up (moved)
        await merging.merge([self.path(o) for o in outputs], self.path(target), rules, resolve,
                          limit=limit, within=self.root_path, move=True)

    def chunks(self, tree: str, *, copy_links: bool = False,
               level: int = archive.DEFAULT_LEVEL) -> Iterator[bytes]:
        """:meth:`archive` as a blocking iterator (scanned now)."""
        return archive.iter_archive(self.path(tree), within=self.root_path,
                                    copy_links=copy_links, level=level)

    async def archive(self, tree: str, *, copy_links: bool = False,
                      level: int = archive.DEFAULT_LEVEL) -> AsyncIterator[bytes]:
        chunks = await aio.to_thread(self.chunks, tree, copy_links=copy_links, level=level)
        return aio.ThreadedChunks(chunks)

    async def unpack(self, chunks: AsyncIterator[bytes]) -> str:
        path = self.root_path / uuid.uuid4().hex
        await output.unpack_folder(chunks, path, replace=False)
        return str(path)

    async def write_archive(self, tree: str, dest: Path) -> None:
        path = self.path(tree)

        def write() -> None:
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                archive.write_archive(path, tmp, within=self.root_path)
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)

        await aio.to_thread(write)

    async def write_folder(self, tree: str, out: Path, *, replace: bool,
                           move: bool = False) -> Path:
        write = output.move_folder if move else output.write_folder
        return await aio.to_thread(write, self.path(tree), out, replace=replace,
                                       within=self.root_path)

    async def names(self) -> set[str]:
        return set(await aio.to_thread(os.listdir, self.root_path))

    async def remove_new(self, before: set[str]) -> list[str]:
        return await aio.to_thread(remove_new, self.root_path, before)

    async def full(self) -> bool:
        return await aio.to_thread(fsutil.is_full, self.root_path)

    async def template_print(self) -> dict[str, tuple[int, int, int, int]]:
        if self.guards_template:
            return {}
        return await aio.to_thread(fingerprint, self.template_path)


def give_tree(folder: Path, area: Path, owner: tuple[int, int], *,
              what: str = "hand {} to the component's user") -> None:
    """Give ``folder`` (in the work area ``area``) and everything in it to ``owner`` (uid, gid)
    for a component to write in: through descriptors only, since other components of the
    session may be renaming things in the area right now (:func:`boride.fsutil.chown_tree`).
    Raises :class:`AreaFailure` naming what could not be given."""
    try:
        fd = fsutil.open_dir(folder, within=area)
    except (OSError, fsutil.UnsafePath) as exc:
        raise AreaFailure(f"cannot {what.format(folder)}: {exc}") from None
    try:
        errors = fsutil.chown_tree(fd, *owner)
    finally:
        os.close(fd)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise AreaFailure(f"cannot {what.format(folder)}: {'; '.join(errors[:3])}{more}")


def take_tree(folder: Path, area: Path) -> None:
    """Make ``folder`` (a component's answer) boride's user's again, closed to everyone else
    at the top first (then nobody else can enter it by path while the rest is taken), then
    everything in it (:func:`give_tree`): the component that wrote it may still be running."""
    try:
        fd = fsutil.open_dir(folder, within=area)
    except (OSError, fsutil.UnsafePath) as exc:
        raise AreaFailure(f"cannot take {folder} back from its component: {exc}") from None
    try:
        os.fchown(fd, os.geteuid(), os.getegid())
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    give_tree(folder, area, (os.geteuid(), os.getegid()),
              what="take {} back from its component")


def remove_new(area: Path, before: set[str]) -> list[str]:
    """Remove what is in ``area`` but was not in ``before``; what could not be removed."""
    try:
        names = os.listdir(area)
    except FileNotFoundError:
        return []
    problems = []
    for name in names:
        if name in before:
            continue
        path = area / name
        try:
            if path.is_dir() and not path.is_symlink():
                fsutil.remove_tree(path, within=area)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            problems.append(f"{path} could not be removed ({describe(exc)}): "
                            "it goes with the session's work area")
    return problems


def fingerprint(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Path -> (mode, size, mtime_ns, inode) of everything below ``root``: any write changes it."""
    out: dict[str, tuple[int, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            out[os.path.relpath(full, root)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                st.st_ino)
    return out
