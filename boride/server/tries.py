"""Try sessions (``POST /executor/try``): a session building a local folder below
``--dev-root``. The try template (its folder and its resolvers) belongs to that session alone,
so a try can never shadow or change a registry template, even under the same id; a refused
try leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

from boride.fsutil import is_within
from boride.pipeline import TemplateUnusable
from boride.runtime.base import BlobImage, HostFolder, TemplateSource
from boride.server.components import Catalog
from boride.server.context import Context
from boride.server.errors import (
    InvalidPath,
    MissingImage,
    MissingPath,
    NotAFolder,
    OutsideDevRoot,
    TemplateCannotRun,
    TryDisabled,
)
from boride.server.models import TryReq
from boride.server.sessions import Sessions, check_id


def try_folder(req: TryReq, dev_root: Path | None, *, visible: bool = True) -> TemplateSource:
    """The files a try names: an image (``source: "image"``, a blob image), or a folder,
    checked: below ``dev_root``, a folder. When the runtime's machine is boride's own
    (``visible``), here, links resolved; else (a folder of the engine's machine) by the words
    here, and where it really leads by the runtime."""
    if req.source == "image":
        # The files come from the template's blob image, as for a registry template (the
        # CLI's imageRef names its Q&A image, which it runs itself).
        props = req.template.principal.properties
        image = props.blob_image if props is not None else None
        if image is None:
            raise MissingImage(req.path, "source 'image' needs the template's blob image: "
                                         "principal.properties.blobDockerReference (and Tag)")
        # the try template belongs to its session: its files too, removed with it
        return BlobImage(image, f"try-{req.session_id}", shared=False)
    if not req.path:
        raise MissingPath(req.path, "path is required when source is 'path'")
    if dev_root is None:
        raise TryDisabled(req.path, "this server accepts no local paths: start it with "
                                    "--dev-root DIR to allow folders below DIR")
    if "\x00" in req.path:
        raise InvalidPath(req.path, f"{req.path!r}: embedded null byte")
    candidate = Path(req.path)
    if not candidate.is_absolute():
        candidate = dev_root / candidate
    if not visible:
        folder = os.path.normpath(candidate)
        if not is_within(folder, str(dev_root)):
            raise OutsideDevRoot(req.path, f"{req.path!r} is not below --dev-root {dev_root}")
        return HostFolder(folder, str(dev_root))
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError) as exc:
        raise InvalidPath(req.path, f"{req.path!r}: {exc}") from None
    if not is_within(str(real), str(dev_root)):
        raise OutsideDevRoot(req.path, f"{req.path!r} is not below --dev-root {dev_root}")
    if not real.is_dir():
        raise NotAFolder(req.path, f"{req.path!r} is not a folder")
    return real


class Tries:
    def __init__(self, ctx: Context, catalog: Catalog, sessions: Sessions) -> None:
        self.ctx = ctx
        self.catalog = catalog
        self.sessions = sessions
        dev_root = ctx.config.dev_root
        self.dev_root = dev_root.resolve() if dev_root is not None else None

    async def start(self, req: TryReq) -> None:
        """Make the try session and start its resolvers (in the session)."""
        check_id(req.session_id)
        folder = try_folder(req, self.dev_root, visible=self.ctx.runtime.host_areas)
        problem = await self.ctx.runtime.template_problem(folder)
        if problem is not None:  # (said first: nothing else matters then)
            raise TemplateUnusable(problem)
        resolvers = await self.catalog.resolvers(req.template.resolvers)
        problems = await self.ctx.cannot_run(await self.catalog.runnables(req.template))
        if problems:
            raise TemplateCannotRun(problems)
        state, _ = await self.sessions.create(req.session_id, req.local_template_id, folder,
                                              try_session=True, exists_ok=False,
                                              resolvers={r.id: c.name for r, c in resolvers})
        state.merger_id = req.merger_id
        try:
            async with state.lock:
                try:
                    await self.ctx.start(state.session, [c for _, c in resolvers])
                finally:
                    state.resolvers.update({r.id: n for r, c in resolvers
                                            if (n := state.session.name_of(c)) is not None})
        except BaseException:
            await self.sessions.delete_if_open(req.session_id)
            raise
