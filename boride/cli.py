"""The ``boride`` command line.

Imports are lazy: at module level only what the options and ``--help`` need (click, boride's
settings and limits), so that ``boride --version`` and ``--help`` start in a few tens of ms; a
command imports what it uses (rich, pydantic, the pipeline, a runtime, the server) when it runs.
tests/test_startup.py checks that the heavy modules stay out.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from boride import __version__, telemetry
from boride.config import SERVE_BUILD_TIMEOUT, Limits, Timeouts
from boride.runtime import RUNTIMES, get_runtime
from boride.settings import SettingError, check_environment, parse_size
from boride.types import Status

if TYPE_CHECKING:
    from rich.console import Console, Group

    from boride.cache import Cache
    from boride.pipeline import BuildOptions, BuildResult
    from boride.pipeline.timeline import Timeline
    from boride.registry import Registry
    from boride.runtime.base import Runtime

T = TypeVar("T")
LIMITS, TIMEOUTS = Limits(), Timeouts()  # the defaults shown by --help
_MAX_ANSWER = click.option(
    "--max-answer", type=click.IntRange(min=1024), default=LIMITS.max_answer, show_default=True,
    help="Largest answer of a component's call read, in bytes; a larger one fails the call.")
EXIT_FAILED = 1
EXIT_USAGE = 2
_STYLE = {Status.OK: "green", Status.DONE: "green", Status.FAILED: "bold red",
          Status.RUNNING: "yellow", Status.CANCELLED: "magenta", Status.SKIPPED: "dim",
          Status.PENDING: "dim"}


@dataclass
class _Row:
    kind: str
    status: Status = Status.PENDING
    stage: str = ""
    seconds: float = 0.0  # its calls
    start: float = 0.0  # its instance's start, until ready
    needed: bool = True  # False: a resolver with no conflict to decide


class Progress:
    """Follows build events: a live table on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, result_names: list[tuple[str, str]], live: bool) -> None:
        self.console = console
        self.rows = {name: _Row(kind) for name, kind in result_names}
        self.stages: dict[str, str] = {}
        # (name, a start?) -> since when: a call waiting for its instance's start counts from
        # the start's end
        self.started: dict[tuple[str, bool], float] = {}
        from rich.live import Live

        self.live = Live(get_renderable=self._render, console=console, transient=False,
                         refresh_per_second=10) if live else None

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def event(self, stage: str, name: str | None, status: Status) -> None:
        now = time.monotonic()
        if name is None:
            self.stages[stage] = status
            if self.live is None and status == Status.RUNNING:
                self.console.print(f"boride: {stage} ...", highlight=False)
            return
        row = self.rows.get(name)
        if row is None:
            return
        key, call = (name, stage == "start"), (name, False)
        if status == Status.RUNNING:
            self.started[key] = now
        elif key in self.started:
            spent = now - self.started.pop(key)
            if stage == "start":
                row.start += spent
            else:
                row.seconds += spent
        from boride.pipeline import NOT_NEEDED

        row.needed = not (stage == "merge" and status == NOT_NEEDED)
        if stage == "start" and call in self.started:  # a call waits for this start
            self.started[call] = now
        else:
            row.status, row.stage = status, stage
        if self.live is None and status != Status.RUNNING:
            shown = status if row.needed else "not needed"
            self.console.print(f"boride: {stage} {row.kind} {name}: {shown}", highlight=False)

    def _render(self) -> Group:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        from boride.pipeline import STAGES

        stages = Text("  ").join(
            Text(f"{s}: {self.stages.get(s, 'waiting')}",
                 style=_STYLE.get(Status(self.stages[s]), "dim") if s in self.stages else "dim")
            for s in STAGES)
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("component", "kind", "stage", "status", "start", "call"):
            table.add_column(col)
        now = time.monotonic()
        for name, row in self.rows.items():
            starting = now - self.started.get((name, True), now)
            start = row.start + starting
            call = row.seconds + (0.0 if starting else now - self.started.get((name, False), now))
            status = Text(row.status, style=_STYLE.get(row.status, "")) if row.needed \
                else Text("not needed", style="dim")
            table.add_row(name, row.kind, row.stage, status, f"{start:.2f}" if start else "",
                          f"{call:.2f}" if call or row.needed else "")
        return Group(stages, table)


def _log_options(level: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--log-level`` (default ``level``) and ``--log-format``, from the environment too."""
    from boride.logs import FORMATS, LEVELS

    def add(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--log-format", type=click.Choice(FORMATS, case_sensitive=False),
                         default="text", show_default=True, envvar="BORIDE_LOG_FORMAT",
                         help="Log lines as text, or as JSON objects (time, level, logger, "
                         "message, trace_id, session, component) one per line.")(f)
        return click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                            default=level, show_default=True, envvar="BORIDE_LOG_LEVEL",
                            help="Log this level and above on stderr.")(f)
    return add


_CACHE_DIR = click.option("--cache-dir", type=click.Path(path_type=Path, file_okay=False),
                          envvar="BORIDE_CACHE_DIR",
                          help="The cache's folder [default: $XDG_CACHE_HOME/boride].")


class _Main(click.Group):
    """The command group; it keeps the command line for :func:`main`'s check."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["boride.argv"] = list(args)
        return super().parse_args(ctx, args)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="boride")
@click.pass_context
def main(ctx: click.Context) -> None:
    """boride runs CyanPrint-style pipelines: processors in parallel, merge, plugins in order."""
    # every BORIDE_* variable checked before any command starts anything (--help still works)
    if not {"-h", "--help"} & set(ctx.meta.get("boride.argv", ())):
        try:
            check_environment()
        except SettingError as exc:
            click.echo(f"boride: {exc}", err=True)
            sys.exit(EXIT_USAGE)


@main.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="Folder to write the result to (default: ./out unless --archive is given).")
@click.option("--archive", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the result as a .tar.gz file.")
@click.option("--force", is_flag=True, help="Replace --out if it exists and is not empty.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="local", show_default=True,
              help="Where components run: local processes or Docker containers.")
@click.option("--parallelism", type=click.IntRange(min=1),
              help="Components in flight at once [default: the file's, else CPU count].")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds the whole build may take.")
@click.option("--ready-timeout", type=click.FloatRange(min=0, min_open=True),
              default=TIMEOUTS.ready,
              show_default=True, help="Seconds a component may take to become ready.")
@click.option("--keep", is_flag=True, help="Keep the session's work area (for debugging).")
@click.option("--cache/--no-cache", "use_cache", default=None,
              help="Reuse the outputs of processors whose inputs are unchanged [default: the "
                   "file's 'cache', else off].")
@_CACHE_DIR
@click.option("--cache-size", default="2g", show_default=True, envvar="BORIDE_CACHE_SIZE",
              help="The cache's size bound; least recently used entries go first.")
@click.option("--watch", is_flag=True,
              help="Keep the components running and build again whenever the template, the "
              "pipeline file or a local component changes (cache on unless --no-cache); "
              "Ctrl-C stops.")
@_MAX_ANSWER
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object describing the build (--watch: one line per build).")
@click.option("--trace", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write the build's timeline to FILE (Trace Event Format: open it in "
              "ui.perfetto.dev or chrome://tracing); --watch: FILE-1.json, FILE-2.json ...")
@_log_options("warning")
def run(pipeline_file: Path, out: Path | None, archive: Path | None, force: bool, runtime: str,
        parallelism: int | None, timeout: float | None, ready_timeout: float, keep: bool,
        use_cache: bool | None, cache_dir: Path | None, cache_size: str, watch: bool,
        max_answer: int, as_json: bool, trace: Path | None, log_level: str,
        log_format: str) -> None:
    """Build PIPELINE (a YAML file) and write the result to a folder or a .tar.gz."""
    from boride.model import PipelineError, load

    _configure_logging(log_level, log_format)
    err = _stderr()
    try:
        pipeline = load(pipeline_file)
    except PipelineError as exc:
        sep = " " if len(exc.problems) == 1 else "\n"  # one problem: one line
        err.print(f"boride: invalid pipeline file:{sep}{exc}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    if out is None and archive is None:
        out = Path("out")
    _check_out(out, force, err)
    import asyncio  # (after the checks of the command line: a refused run imports no build)

    from boride.pipeline import BuildOptions, build

    options = BuildOptions(limits=Limits(parallelism=parallelism, max_answer=max_answer),
                           timeouts=Timeouts(ready=ready_timeout, build=timeout),
                           out=out.absolute() if out else None,
                           archive=archive.absolute() if archive else None,
                           replace=force, keep=keep,
                           cache=_cache(use_cache if use_cache is not None
                                        else (watch or pipeline.cache), cache_dir, cache_size,
                                        err),
                           cache_skip=(pipeline_file.absolute(),))
    if keep and runtime != "local":
        err.print("boride: --keep keeps host folders only: on Docker the work area is an "
                  "engine volume, removed with the session (use --archive to look at the "
                  "result)", highlight=False, markup=False)
    options.timeline = _timeline(trace, options.limits.build_parallelism(pipeline.parallelism),
                                 err) or telemetry.timeline()
    _reclaim(runtime, None)
    if watch:
        sys.exit(_watch(pipeline_file, runtime, options, as_json, err, trace))
    names = [(c.name, c.kind.value) for c in pipeline.components()]
    live = err.is_terminal and not as_json
    with Progress(err, names, live=live) as progress:
        if not as_json:
            options.on_event = progress.event
        with telemetry.span("boride run"):
            outcome = asyncio.run(_cancellable(runtime, lambda rt: build(pipeline, rt, options)))
            telemetry.export_build(options.timeline, outcome)
    if isinstance(outcome, int):
        err.print(f"boride: {'interrupted' if outcome == 130 else 'terminated'}; every "
                  "component was stopped and the work area removed", highlight=False)
        sys.exit(outcome)
    if trace is not None and not _write_trace(options.timeline, trace, err):
        sys.exit(EXIT_FAILED)
    _report(outcome, as_json, err)
    leave(0 if outcome.ok else EXIT_FAILED)


#: Set by boride.entry in a real ``boride`` process (not in click's test runner).
LEAVE_AT_ONCE = False


def leave(code: int) -> NoReturn:
    """End a ``boride run`` whose work is all done: with :data:`LEAVE_AT_ONCE`, the exit
    skips the interpreter's tear-down of hundreds of modules (a tenth of a small build's
    wall time) once what is buffered is written; otherwise as ``sys.exit``."""
    if LEAVE_AT_ONCE:
        telemetry.shutdown()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _check_out(out: Path | None, force: bool, err: Console) -> None:
    """``--out`` must be empty or absent unless ``--force`` (exit 2)."""
    try:
        if out is not None and out.exists() and not force and (
                not out.is_dir() or any(out.iterdir())):
            err.print(f"boride: output folder {out} exists and is not empty; use --force to "
                      "replace it", highlight=False, markup=False)
            sys.exit(EXIT_USAGE)
    except OSError as exc:
        err.print(f"boride: cannot use output folder {out}: {exc.strerror}", highlight=False,
                  markup=False)
        sys.exit(EXIT_USAGE)


def _timeline(trace: Path | None, parallelism: int, err: Console) -> Timeline | None:
    """``--trace``'s timeline (None without); its folder must exist (exit 2)."""
    if trace is None:
        return None
    from boride.pipeline.timeline import Timeline

    if not trace.absolute().parent.is_dir():
        err.print(f"boride: cannot write the trace file {trace}: its folder does not exist",
                  highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    return Timeline(parallelism)


def _write_trace(timeline: Timeline | None, path: Path, err: Console) -> bool:
    if timeline is None:
        return True
    try:
        timeline.write(path)
    except OSError as exc:
        err.print(f"boride: cannot write the trace file {path}: {exc.strerror or exc}",
                  highlight=False, markup=False)
        return False
    return True


@main.command()
@click.option("--session", "session", metavar="ID", help="Remove what this session left.")
@click.option("--all", "all_", is_flag=True, help="Remove every boride container and volume.")
@click.option("--json", "as_json", is_flag=True, help="Print the removed names as JSON.")
def clean(session: str | None, all_: bool, as_json: bool) -> None:
    """Remove the Docker containers and volumes a killed run left behind (found by label)."""
    err = _stderr()
    if (session is None) == (not all_):
        err.print("boride: give exactly one of --session ID or --all", highlight=False)
        sys.exit(EXIT_USAGE)
    from boride.runtime.base import RuntimeFailure
    from boride.runtime.docker import clean as docker_clean

    try:
        removed = docker_clean(session, all_)
    except ValueError as exc:
        err.print(f"boride: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    except RuntimeFailure as exc:  # (one line for each thing left)
        for line in str(exc).splitlines():
            err.print(f"boride: {line}", highlight=False, markup=False)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(json.dumps({"removed": removed}))
    else:
        for name in removed:
            click.echo(f"removed {name}")
        err.print(f"boride: removed {len(removed)} container(s)/volume(s)", highlight=False)


def _cache(wanted: bool, folder: Path | None, size: str, err: Console, *,
           namespace: str = "default") -> Cache | None:
    """The cache ``--cache`` asks for, or None; a bad ``--cache-size`` ends the command."""
    if not wanted:
        return None
    from boride.cache import Cache, default_root

    try:
        max_bytes = parse_size(size)
    except ValueError as exc:
        err.print(f"boride: --cache-size: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)
    return Cache((folder or default_root()).absolute(), max_bytes=max_bytes,
                 namespace=namespace)


@main.group("cache")
def cache_group() -> None:
    """Look at or empty the cache of processor outputs (boride run --cache)."""


@cache_group.command("info")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def cache_info(cache_dir: Path | None, as_json: bool) -> None:
    """Where the cache is, its entries and their size (per namespace: API tenants)."""
    from boride.cache import default_root
    from boride.cache import namespaces as cache_namespaces

    root = (cache_dir or default_root()).absolute()
    infos = [c.info() for c in cache_namespaces(root)]
    entries, size = sum(i.entries for i in infos), sum(i.bytes for i in infos)
    if as_json:
        click.echo(json.dumps({"root": str(root), "entries": entries, "bytes": size,
                               "namespaces": {i.root.name: {"entries": i.entries,
                                                            "bytes": i.bytes} for i in infos}}))
        return
    click.echo(f"cache: {root}")
    click.echo(f"entries: {entries}, {_human(size)}")
    for i in infos:
        if len(infos) > 1:
            click.echo(f"  {i.root.name}: {i.entries} entries, {_human(i.bytes)}")


@cache_group.command("clear")
@_CACHE_DIR
@click.option("--json", "as_json", is_flag=True, help="Print what was removed as JSON.")
def cache_clear(cache_dir: Path | None, as_json: bool) -> None:
    """Remove every entry of the cache (builds running now keep working)."""
    from boride.cache import clear as clear_cache
    from boride.cache import default_root

    root = (cache_dir or default_root()).absolute()
    entries, size = clear_cache(root)
    if as_json:
        click.echo(json.dumps({"root": str(root), "removed": entries, "bytes": size}))
    else:
        click.echo(f"removed {entries} entries ({_human(size)}) from {root}")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _watch(pipeline_file: Path, runtime: str, options: BuildOptions, as_json: bool,
           err: Console, trace: Path | None = None) -> int:
    """``run --watch``: build on every change until Ctrl-C; the exit code."""
    import asyncio

    from boride.pipeline.timeline import numbered
    from boride.watch import Round, counts, watch

    def report(r: Round) -> None:
        if as_json:
            body = r.result.as_json() if r.result is not None else {"status": "failed",
                                                                     "errors": r.problems}
            click.echo(json.dumps({"build": r.number, "changed": r.changed,
                                   "seconds": round(r.seconds, 6), **body}), nl=True)
            sys.stdout.flush()
            return
        if r.changed:
            shown = ", ".join(r.changed[:3]) + (" ..." if len(r.changed) > 3 else "")
            err.print(f"boride: changed: {shown}", highlight=False, markup=False)
        if r.result is not None and r.result.ok:
            cached, called = counts(r.result)
            where = " and ".join(str(p) for p in (r.result.output, r.result.archive) if p)
            err.print(f"boride: build {r.number} ok in {r.seconds:.2f}s ({called} processor(s) "
                      f"called, {cached} from the cache); result in {where}",
                      highlight=False, markup=False)
        else:
            err.print(f"boride: build {r.number} failed"
                      + ("; the last good result stays" if r.number > 1 else "") + ":",
                      style="bold red", highlight=False)
            for line in (r.result.errors if r.result is not None else r.problems):
                err.print("  " + line.replace("\n", "\n  "), highlight=False, markup=False)
        err.print("boride: watching for changes (Ctrl-C stops)", highlight=False, markup=False)

    def traced(number: int, timeline: Timeline) -> None:
        assert trace is not None
        _write_trace(timeline, numbered(trace, number), err)

    outcome = asyncio.run(_cancellable(runtime, lambda rt: watch(
        pipeline_file, rt, options, report, trace=traced if trace is not None else None)))
    if isinstance(outcome, int):
        err.print(f"boride: {'interrupted' if outcome == 130 else 'terminated'}; every "
                  "component was stopped and the work area removed", highlight=False)
        return outcome
    return 0


async def _cancellable(runtime_name: str, work: Callable[[Runtime], Awaitable[T]]) -> T | int:
    """Run ``work`` on a new runtime; Ctrl-C or SIGTERM cancel it (with full clean-up) and give
    an exit code."""
    import asyncio

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    runtime = get_runtime(runtime_name)
    try:
        return await work(runtime)
    except asyncio.CancelledError:
        if not received:
            raise
        return 130 if received[0] == signal.SIGINT else 143
    finally:
        await runtime.aclose()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _report(result: BuildResult, as_json: bool, err: Console) -> None:
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    if result.ok:
        where = [str(p) for p in (result.output, result.archive) if p is not None]
        if not as_json:
            err.print(f"boride: build ok in {sum(result.stages.values()):.2f}s; result in "
                      + " and ".join(where), highlight=False, markup=False)
    else:
        err.print("boride: build failed:", style="bold red", highlight=False)
        for line in result.errors:
            err.print("  " + line.replace("\n", "\n  "), highlight=False, markup=False)
    if result.work_dir is not None:
        err.print(f"boride: work area kept in {result.work_dir}", highlight=False, markup=False)
    if result.leftovers:
        err.print("boride: clean-up incomplete:", style="bold yellow", highlight=False)
        for line in result.leftovers:
            err.print("  " + line.replace("\n", "\n  "), highlight=False, markup=False)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token (or "
              "--trusted-network).")
@click.option("--port", type=click.IntRange(0, 65535), default=9000, show_default=True)
@click.option("--runtime", type=click.Choice(RUNTIMES), default="local", show_default=True,
              help="Where components run: local processes or Docker containers.")
@click.option("--registry", "registries", multiple=True, envvar="BORIDE_REGISTRY",
              metavar="FILE|URL", help="Where component names are looked up: a registry YAML "
              "file or the CyanPrint registry's URL; repeat to ask several in turn.")
@click.option("--token", envvar="BORIDE_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' on every route but GET / "
              "(also read from BORIDE_TOKEN).")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              envvar="BORIDE_TOKEN_FILE", help="Read the token from this file (a swarm "
              "secret, say: /run/secrets/NAME); its surrounding white space is ignored.")
@click.option("--trusted-network", is_flag=True,
              help="Allow a non-loopback --host without a token (the CyanPrint CLI sends "
              "none): whoever reaches the port can run containers/processes as boride.")
@click.option("--max-builds", type=click.IntRange(min=1), default=LIMITS.max_builds,
              show_default=True,
              help="Builds doing boride's own work (and component start-ups) at once; the "
              "others wait. A build awaiting its components' answers holds no slot.")
@click.option("--dev-root", type=click.Path(path_type=Path, file_okay=False, exists=True),
              help="Allow POST /executor/try with source 'path' for folders below DIR "
              "[default: the working directory when --host is loopback; else none].")
@click.option("--max-body", type=click.IntRange(min=1024), default=LIMITS.max_body,
              show_default=True, help="Largest request body accepted, in bytes.")
@_MAX_ANSWER
@click.option("--max-sessions", type=click.IntRange(min=1), default=LIMITS.max_sessions,
              show_default=True)
@click.option("--session-ttl", type=click.FloatRange(min=0), default=TIMEOUTS.session_idle,
              show_default=True,
              help="Seconds before an idle session is removed (0: never); the default, 12 hours "
              "as the Go coordinator's, covers a long interactive Q&A.")
@click.option("--work-root", type=click.Path(path_type=Path, file_okay=False),
              help="Where session work areas go [default: the system temp folder].")
@click.option("--parallelism", type=click.IntRange(min=1),
              help="Components in flight at once within a build [default: CPU count].")
@click.option("--ready-timeout", type=click.FloatRange(min=0, min_open=True),
              default=TIMEOUTS.ready,
              show_default=True, help="Seconds a component may take to become ready.")
@click.option("--build-timeout", type=click.FloatRange(min=0, min_open=True),
              default=SERVE_BUILD_TIMEOUT, show_default=True,
              help="Seconds a build may take (the CyanPrint CLI waits 600 s for one).")
@click.option("--cache", "use_cache", is_flag=True, envvar="BORIDE_CACHE",
              help="Reuse the outputs of processors whose inputs are unchanged, across builds "
              "and sessions (each token its own cache unless --cache-shared).")
@_CACHE_DIR
@click.option("--cache-size", default="2g", show_default=True, envvar="BORIDE_CACHE_SIZE",
              help="The cache's size bound; least recently used entries go first.")
@click.option("--cache-shared", is_flag=True,
              help="One cache for every client, whatever its token.")
@click.option("--state-name", metavar="NAME",
              help="The name this server's sessions are kept under on the Docker engine: a "
              "server started again with the same name (on the same engine) takes over the "
              "sessions the previous one left [default: serve-PORT; the local runtime keeps "
              "none].")
@click.option("--keep-sessions", is_flag=True,
              help="Leave the sessions on the engine also when stopped with Ctrl-C (SIGTERM "
              "always leaves them, on Docker, for the next server).")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM: seconds the builds in flight may take to finish while new "
              "sessions and builds are refused (503), before the server exits.")
@_log_options("info")
def serve(host: str, port: int, runtime: str, registries: tuple[str, ...], token: str | None,
          token_file: Path | None, trusted_network: bool, max_builds: int,
          dev_root: Path | None, max_body: int, max_answer: int, max_sessions: int,
          session_ttl: float, work_root: Path | None, parallelism: int | None,
          ready_timeout: float, build_timeout: float, use_cache: bool,
          cache_dir: Path | None, cache_size: str, cache_shared: bool, state_name: str | None,
          keep_sessions: bool, drain_timeout: float, log_level: str, log_format: str) -> None:
    """Serve the Go coordinator's HTTP API (OpenAPI docs at /docs); see docs/api.md.

    On SIGTERM it drains (see --drain-timeout), then exits leaving its sessions on a Docker
    engine for the next server of its --state-name; on Ctrl-C it removes what it made
    (unless --keep-sessions)."""
    from boride.cache import cache_namespace
    from boride.registry import location
    from boride.server import ServerConfig, create_app

    err = _stderr()

    def fail(message: str) -> None:
        err.print(f"boride serve: {message}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)

    try:
        token = one_token(token, token_file, "--token")
    except ValueError as exc:
        fail(str(exc))
    exposure = _exposure_problem(host, token, trusted_network)
    if exposure is not None:
        fail(exposure)
    if dev_root is None and _is_loopback(host):  # the Go coordinator's default
        dev_root = Path.cwd()
    config = ServerConfig(
        runtime=runtime, registry=registries, token=token,
        dev_root=dev_root.resolve() if dev_root else None,
        work_root=work_root.absolute() if work_root else None,
        limits=Limits(parallelism=parallelism, max_builds=max_builds, max_body=max_body,
                      max_answer=max_answer, max_sessions=max_sessions),
        timeouts=Timeouts(ready=ready_timeout, build=build_timeout,
                          session_idle=session_ttl or None),
        cache=_cache(use_cache, cache_dir, cache_size, err, namespace=cache_namespace(
            None if cache_shared else token)),
        state_name=(state_name or f"serve-{port}") if runtime == "docker" else None)
    registry, runtime_ = _usable(registries, runtime, fail)
    app = create_app(config, runtime=runtime_, registry=registry)
    _configure_logging(log_level, log_format)
    notes = [*_reclaim(runtime, config.work_root), *_serve_notes(host, port, config,
                                                                 trusted_network)]
    notes.append(f"http://{host}:{port} (runtime {runtime}, registry {location(registry)}, "
                 f"at most {max_builds} builds at work at once"
                 f"{', token required' if token else ''}); "
                 "API docs at /docs")
    for note in notes:
        err.print(f"boride serve: {note}", highlight=False, markup=False)
    _run_server(app, host, port, log_level, keep_sessions=keep_sessions,
                drain_timeout=drain_timeout)


def _usable(registries: tuple[str, ...], runtime: str, fail: Callable[[str], None]
            ) -> tuple[Registry, Runtime]:
    """The registry and the runtime a server is told to use, each checked (``fail``: how the
    server refuses one that cannot be used)."""
    import asyncio

    from boride.registry import RegistryError, open_registry

    try:
        registry = open_registry(registries)
    except RegistryError as exc:
        fail("cannot use the registry:" + (" " if len(exc.errors) == 1 else "\n") + str(exc))
        raise
    runtime_ = get_runtime(runtime)
    problems = asyncio.run(runtime_.problems([]))
    if problems:
        fail("the {} runtime cannot run components here:\n  {}".format(
            runtime, "\n  ".join(problems)))
    return registry, runtime_


def _run_server(app: Any, host: str, port: int, log_level: str, *, keep_sessions: bool,
                drain_timeout: float) -> None:
    """Serve ``app`` until a signal: SIGTERM drains first (:mod:`boride.server.drain`)."""
    import uvicorn

    from boride.server.drain import DrainingServer

    service = app.state.service
    service.keep_on_close = keep_sessions

    def leave_sessions() -> None:  # for the next server, where the runtime keeps them
        service.keep_on_close = keep_sessions or service.ctx.runtime.sessions_outlive

    # No X-Forwarded-For: the client address is the connection's, which the refusal of
    # components' addresses relies on (boride.server.middleware.ComponentGuardMiddleware).
    DrainingServer(uvicorn.Config(
        app, host=host, port=port, log_level=log_level.lower(), timeout_graceful_shutdown=10,
        access_log=False, log_config=None, proxy_headers=False), service.drain, drain_timeout,
        leave_sessions).run()


def _reclaim(runtime: str, work_root: Path | None) -> list[str]:
    """On the local runtime, remove the work folders a killed boride left (never a living
    one's); a note saying so, if any."""
    if runtime != "local":
        return []
    from boride.runtime.local import reclaim_folders

    count = len(reclaim_folders(work_root))
    return [f"removed {count} work folder(s) a killed boride left"] if count else []


def _configure_logging(log_level: str, log_format: str = "text") -> None:
    from boride import logs

    logs.configure(log_level.lower(), log_format.lower())
    telemetry.setup()  # (off unless OTEL_* asks; flushed at exit)


def one_token(token: str | None, token_file: Path | None, option: str) -> str | None:
    """The token given as ``option`` or in ``option``-file; ValueError when both are given
    or the file has none."""
    if token_file is None:
        return token
    if token is not None:
        raise ValueError(f"give {option} or {option}-file, not both")
    return read_token(token_file)


def read_token(path: Path) -> str:
    """The token in ``path`` (white space around it ignored); ValueError saying what is
    wrong when there is none."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file {path}: {exc}") from None
    if not token:
        raise ValueError(f"the token file {path} is empty")
    return token


def _serve_notes(host: str, port: int, config: Any, trusted_network: bool) -> list[str]:
    """What ``boride serve`` says at start, before where it listens."""
    notes = []
    if not config.registry:
        notes.append("no --registry given: every component name is unknown "
                     "(try --registry examples/registry.yaml)")
    if trusted_network and not config.token and not _is_loopback(host):
        notes.append(f"WARNING: --trusted-network: no token on {host}: whoever reaches port "
                     f"{port} can run containers/processes as boride (runtime "
                     f"{config.runtime}); keep it on a private network")
    if config.dev_root is not None:
        notes.append(f"try sessions from folders below {config.dev_root} (--dev-root)")
    return notes


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _exposure_problem(host: str, token: str | None, trusted_network: bool = False
                      ) -> str | None:
    """Why ``boride serve`` must not listen on ``host`` with this token, if it must not."""
    if not _is_loopback(host) and not token and not trusted_network:
        return (f"--host {host} is not a loopback address: anyone who can reach it could run "
                "components here, so give --token TOKEN (or BORIDE_TOKEN) too, or "
                "--trusted-network on a private network only")
    if token is not None and len(token) < 16:
        return "--token must be at least 16 characters long"
    return None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token (or "
              "--trusted-network).")
@click.option("--port", type=click.IntRange(0, 65535), default=9000, show_default=True)
@click.option("--worker", "workers", multiple=True, metavar="URL",
              help="A worker (boride serve) by URL, e.g. http://10.0.0.5:9000; repeat.")
@click.option("--discover", metavar="NAME",
              help="A DNS name whose addresses are the workers, asked again every "
              "--interval (on a swarm: tasks.<service>).")
@click.option("--worker-port", type=click.IntRange(1, 65535), default=9000, show_default=True,
              help="The workers' port (with --discover).")
@click.option("--worker-token", envvar="BORIDE_WORKER_TOKEN", metavar="TOKEN",
              help="The token the workers require (sent as a bearer token).")
@click.option("--worker-token-file", type=click.Path(path_type=Path, dir_okay=False,
                                                     exists=True),
              envvar="BORIDE_WORKER_TOKEN_FILE",
              help="Read the workers' token from this file (a swarm secret).")
@click.option("--token", envvar="BORIDE_TOKEN", metavar="TOKEN",
              help="Require 'Authorization: Bearer TOKEN' from the front's own clients on "
              "every route but GET /.")
@click.option("--trusted-network", is_flag=True,
              help="Allow a non-loopback --host without a token (the CyanPrint CLI sends "
              "none): whoever reaches the port can run builds on every worker.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds between rounds of discovery and health checks.")
@click.option("--lost-after", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds of failed checks after which a worker is lost (its sessions' "
              "calls answer 503 at once; one failed check already stops new sessions there).")
@click.option("--max-body", type=click.IntRange(min=1024), default=LIMITS.max_body,
              show_default=True, help="Largest request body in bytes (413 beyond).")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="On SIGTERM: seconds the calls in flight (builds streaming through) may "
              "take while new sessions and builds are refused (503), before the front exits.")
@_log_options("info")
def front(host: str, port: int, workers: tuple[str, ...], discover: str | None,
          worker_port: int, worker_token: str | None, worker_token_file: Path | None,
          token: str | None, trusted_network: bool, interval: float, lost_after: float,
          max_body: int, drain_timeout: float, log_level: str, log_format: str) -> None:
    """Serve the coordinator's API in front of workers (boride serve on each node): each
    new session goes to the healthy worker with the fewest sessions, and stays there.
    See docs/scaling.md."""
    import uvicorn

    from boride.front import FrontConfig, create_front_app
    from boride.server.drain import DrainingServer

    err = _stderr()

    def fail(message: str) -> None:
        err.print(f"boride front: {message}", highlight=False, markup=False)
        sys.exit(EXIT_USAGE)

    if not workers and not discover:
        fail("name the workers: --worker URL (repeat) or --discover NAME")
    try:
        worker_token = one_token(worker_token, worker_token_file, "--worker-token")
    except ValueError as exc:
        fail(str(exc))
    exposure = _exposure_problem(host, token, trusted_network)
    if exposure is not None:
        fail(exposure)
    config = FrontConfig(workers=workers, discover=discover, worker_port=worker_port,
                         worker_token=worker_token, token=token, interval=interval,
                         lost_after=lost_after, max_body=max_body)
    app = create_front_app(config)
    _configure_logging(log_level, log_format)
    if trusted_network and not token and not _is_loopback(host):
        err.print(f"boride front: WARNING: --trusted-network: no token on {host}: whoever "
                  f"reaches port {port} can run builds on every worker", highlight=False,
                  markup=False)
    where = ", ".join([*workers, *([f"{discover}:{worker_port} (DNS)"] if discover else [])])
    err.print(f"boride front: http://{host}:{port}, workers: {where}"
              f"{'' if worker_token else ' (no worker token)'}", highlight=False,
              markup=False)
    DrainingServer(uvicorn.Config(
        app, host=host, port=port, log_level=log_level.lower(), timeout_graceful_shutdown=10,
        access_log=False, log_config=None, proxy_headers=False), app.state.drain,
        drain_timeout).run()


def _stderr() -> Console:
    """The console of boride's messages (rich is imported by the commands that print only)."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _document_environment(group: click.Group) -> None:
    """Every option with an ``envvar`` shows it in ``--help`` ("env var: ..."), ``--runtime``
    names the variables its runtimes read, and ``boride --help`` lists every ``BORIDE_*``
    variable. Done here, once, so that no option's decorator has to remember it."""
    from boride.settings import SETTINGS

    runtime_vars = ", ".join(s.name for s in SETTINGS if s.name.startswith(
        ("BORIDE_LOCAL_", "BORIDE_DOCKER_", "BORIDE_HELPER_IMAGE")))
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _document_environment(command)
            continue
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True
            if isinstance(param, click.Option) and param.name == "runtime" and param.help:
                param.help += f" Their settings: {runtime_vars} (README 'Settings')."
    if group is main:
        lines = "\n".join(f"  {s.name}: {s.meaning}" for s in SETTINGS)
        group.epilog = f"\b\nEnvironment variables (checked before any command starts):\n{lines}"


_document_environment(main)
