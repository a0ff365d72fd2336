"""Handing folders of the work area to the container user.

Folders in the area are made by boride (root), private; a processor writes its ``writeDir`` and
a plugin edits the merged tree as the unprivileged container user, so that user must own them
first. Other containers of the session may be renaming things in the area meanwhile: the
tree is walked through descriptors only (:func:`boride.fsutil.chown_tree`), from a folder
opened and checked to be inside the area."""

from __future__ import annotations

import os
from pathlib import Path

from boride import fsutil
from boride.runtime.base import RuntimeFailure


def hand_over(root: Path, area: Path, uid: int, gid: int) -> None:
    """Give ``root`` (in the work area ``area``) and everything below it to ``uid:gid``;
    :class:`RuntimeFailure` naming what could not be handed over."""
    try:
        fd = fsutil.open_dir(root, within=area)
    except (OSError, fsutil.UnsafePath) as exc:
        raise RuntimeFailure(f"cannot hand {root} to the container user: {exc}") from None
    try:
        errors = fsutil.chown_tree(fd, uid, gid)
    finally:
        os.close(fd)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise RuntimeFailure(f"cannot hand {root} to the container user: "
                             f"{'; '.join(errors[:3])}{more}")
