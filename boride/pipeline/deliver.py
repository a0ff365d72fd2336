"""Where a build's result goes (an archive, a folder), and what a failed build's full disk
means."""

from __future__ import annotations

from boride import archive, output
from boride.area import Area
from boride.pipeline.results import BuildFailed, BuildOptions, BuildResult
from boride.pipeline.session import Session


async def deliver(area: Area, tree: str, options: BuildOptions, result: BuildResult, *,
                   move: bool = False) -> None:
    """Write the result where the options say: an archive, a folder (with ``move``, by
    renaming the result into place where the area can)."""
    try:
        if options.archive is not None:
            dest = options.archive
            try:
                await area.write_archive(tree, dest)
            except OSError as exc:
                raise BuildFailed([f"output: cannot write the archive {dest}: "
                                   f"{exc.strerror or exc}"]) from None
            result.archive = dest
        if options.out is not None:
            result.output = await area.write_folder(tree, options.out, replace=options.replace,
                                                    move=move)
    except (archive.ArchiveError, output.OutputError) as exc:
        raise BuildFailed([f"output: {e}" for e in exc.errors[:output.MAX_SHOWN]] + (
            [f"output: ... and {len(exc.errors) - output.MAX_SHOWN} more"]
            if len(exc.errors) > output.MAX_SHOWN else [])) from None


async def full_disk(session: Session) -> list[str]:
    """Components rarely say that the disk is full (they may not even manage to print):
    when a build fails on a full work area, say so."""
    ws = session.workspace
    if ws is not None and ws.area is not None and await ws.area.full():
        return [f"the work area's file system is full ({ws.area.root}): "
                "free some space, or give another work folder (TMPDIR)"]
    return []
