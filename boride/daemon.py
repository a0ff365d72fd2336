"""The entry point of boride's image (``boride/serve``): the commands the CyanPrint CLI gives
the Go coordinator's image, then any ``boride`` command.

* ``setup``: make the ``cyanprint`` bridge network if missing, then exit (the CLI runs this
  once, with the Docker socket, before starting the daemon);
* ``start [--registry URL|FILE] [boride serve options]`` (the default): ``boride serve`` on
  0.0.0.0:9000 with the Docker runtime, ``--trusted-network`` (the CLI sends no token: publish
  the port on the host's loopback) and ``--dev-root /`` (try paths are the host's);
  ``BORIDE_REGISTRY`` is honoured as by ``boride serve``;
* ``worker [boride serve options]``: a swarm worker (issue 15): joins its own container to the
  ``cyanprint`` network (it reaches its node's components there), then ``boride serve`` on
  0.0.0.0:9000 with the Docker runtime and the shared token (``--token-file``, by default the
  swarm secret ``/run/secrets/boride_token``): it answers nothing without it;
* ``front [boride front options]``: ``boride front`` on 0.0.0.0:9000 with
  ``--trusted-network`` (the CLI sends no token), the workers' token from
  ``/run/secrets/boride_token`` unless told otherwise;
* ``cleanup [--session ID]``: remove every container and volume boride labelled (or one
  session's), naming each; exit 1 when something could not be removed;
* anything else that is a ``boride`` command (``run``, ``serve``, ``clean``, ``helper``, ...)
  runs that command: ``docker run boride/serve:latest helper ...`` is ``boride helper ...``.

Errors are one line on stderr (``boride: ...``), never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from boride.errors import BorideError

USAGE = """\
usage: docker run [docker options] boride/serve:latest [COMMAND [ARGS...]]

boride as the CyanPrint CLI's coordinator container (the Go coordinator's commands), or any
boride command.

commands:
  start [--registry URL|FILE] [boride serve options]
              serve the coordinator API on 0.0.0.0:9000 with the Docker runtime (the
              default); the registry also from BORIDE_REGISTRY
  setup       create the cyanprint bridge network if it is missing, then exit
  worker [boride serve options]
              a swarm worker: on the cyanprint network, serving 0.0.0.0:9000 with the
              Docker runtime, only to the shared token (/run/secrets/boride_token)
  front [boride front options]
              the swarm's front on 0.0.0.0:9000 (see docs/scaling.md)
  cleanup [--session ID]
              remove every container and volume boride labelled (or one session's)
{boride}
The Docker socket must be bind-mounted: -v /var/run/docker.sock:/var/run/docker.sock
"""

#: What ``start`` runs: ``boride serve`` with these options, then the ones given to ``start``.
SERVE_ARGS = ("serve", "--runtime", "docker", "--host", "0.0.0.0", "--port", "9000",
              "--trusted-network", "--dev-root", "/")

#: What ``worker`` runs: ``boride serve`` without ``--trusted-network``: the shared token only.
WORKER_ARGS = ("serve", "--runtime", "docker", "--host", "0.0.0.0", "--port", "9000")
#: What ``front`` runs.
FRONT_ARGS = ("front", "--host", "0.0.0.0", "--port", "9000", "--trusted-network")
#: Where a swarm secret named ``boride_token`` is (the token workers require).
TOKEN_SECRET = "/run/secrets/boride_token"

EXIT_FAILED = 1
EXIT_USAGE = 2


class DaemonError(BorideError):
    """A failure to report in one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _boride(args: list[str]) -> int:
    """Run the ``boride`` command line with ``args``; its exit code."""
    from boride.cli import main

    try:
        main.main(args=args, prog_name="boride", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return EXIT_FAILED
    return 0


def boride_commands() -> dict[str, str]:
    """The ``boride`` CLI's commands (hidden ones too) and their one-line help."""
    from boride.cli import main

    return {name: ("" if cmd.hidden else cmd.get_short_help_str(76))
            for name, cmd in sorted(main.commands.items())}


def usage() -> str:
    shown = [f"  {name:<10}  {text}"
             for name, text in boride_commands().items() if text]
    lines = ["boride's own commands (COMMAND --help for theirs):", *shown] if shown else []
    return USAGE.format(boride="\n".join(lines))


def setup(args: list[str]) -> int:
    """Create the components' network if missing (``--network NAME``: another one)."""
    from boride.runtime.base import RuntimeFailure
    from boride.runtime.docker import NETWORK, connect, find_or_create
    from boride.runtime.docker.engine import ENGINE_ERRORS, reason

    name = NETWORK
    if args[:1] == ["--network"] and len(args) == 2:
        name = args[1]
    elif args:
        raise DaemonError(f"setup: unexpected arguments {' '.join(args)!r} (usage: setup "
                          "[--network NAME])", EXIT_USAGE)
    try:
        client = connect(timeout=60)
    except RuntimeFailure as exc:
        raise DaemonError(f"setup: {exc}") from None
    try:
        network_id = find_or_create(client.api, name)
    except ENGINE_ERRORS as exc:
        raise DaemonError(f"setup: cannot create the {name} network: {reason(exc)}") from None
    finally:
        client.close()
    print(f"network {name} ready ({network_id[:12]})", flush=True)
    return 0


def start(args: list[str]) -> int:
    """``boride serve`` as the CLI's coordinator (the Docker runtime, on 0.0.0.0:9000)."""
    warning = exposure_warning(os.environ.get("HOSTNAME", ""))
    if warning:
        print(f"boride: WARNING: {warning}", file=sys.stderr, flush=True)
    helper_is_own_image(os.environ.get("HOSTNAME", ""))
    return _boride([*SERVE_ARGS, *args])


def helper_is_own_image(container: str) -> None:
    """Unless ``BORIDE_HELPER_IMAGE`` says otherwise, every session's helper runs this
    container's own image: the very same code (``boride/serve:latest`` may be another build
    on this engine, speaking another helper protocol)."""
    from boride.runtime.base import RuntimeFailure
    from boride.runtime.docker import connect
    from boride.runtime.docker.engine import ENGINE_ERRORS
    from boride.runtime.docker.helper import IMAGE_ENV

    if os.environ.get(IMAGE_ENV) or not container:
        return
    try:
        client = connect(timeout=10)
    except RuntimeFailure:
        return  # the server says what is wrong with the engine
    try:
        info = client.api.inspect_container(container)
    except ENGINE_ERRORS:
        return  # not a container this engine knows (boride runs elsewhere)
    finally:
        client.close()
    name = str((info.get("Config") or {}).get("Image") or "")
    # a name pinned to a digest may not be how the image is known here: its id always is
    os.environ[IMAGE_ENV] = name if name and "@" not in name else str(info.get("Image") or "")


def _given(args: list[str], *options: str) -> bool:
    return any(a == o or a.startswith(f"{o}=") for a in args for o in options)


def worker(args: list[str]) -> int:
    """A swarm worker: this container joined to the components' network, then ``boride
    serve`` that answers only the shared token."""
    token: list[str] = []
    if not (_given(args, "--token", "--token-file") or os.environ.get("BORIDE_TOKEN")
            or os.environ.get("BORIDE_TOKEN_FILE")):
        if not os.path.exists(TOKEN_SECRET):
            raise DaemonError(f"worker: no token: give --token-file FILE (or the swarm secret "
                              f"boride_token, at {TOKEN_SECRET}); a worker answers nothing "
                              "else", EXIT_USAGE)
        token = ["--token-file", TOKEN_SECRET]
    join_components_network(os.environ.get("HOSTNAME", ""))
    helper_is_own_image(os.environ.get("HOSTNAME", ""))
    return _boride([*WORKER_ARGS, *token, *args])


def join_components_network(container: str) -> None:
    """Connect this container (``container``: its id or name) to the components' network,
    made if missing: boride reaches its components there, by address."""
    from boride.runtime.base import RuntimeFailure
    from boride.runtime.docker import NETWORK, connect, find_or_create
    from boride.runtime.docker.engine import ENGINE_ERRORS, reason

    name = NETWORK
    if not container:
        raise DaemonError("worker: HOSTNAME does not name this container")
    try:
        client = connect(timeout=60)
    except RuntimeFailure as exc:
        raise DaemonError(f"worker: {exc}") from None
    try:
        network_id = find_or_create(client.api, name)
        attached = client.api.inspect_container(container)["NetworkSettings"]["Networks"]
        if name not in (attached or {}):
            client.api.connect_container_to_network(container, network_id)
    except ENGINE_ERRORS as exc:
        raise DaemonError(f"worker: cannot join this container to the {name} network: "
                          f"{reason(exc)}") from None
    finally:
        client.close()
    print(f"worker: on network {name} ({network_id[:12]})", file=sys.stderr, flush=True)


def front(args: list[str]) -> int:
    """``boride front`` on 0.0.0.0:9000, the workers' token from the swarm secret."""
    token: list[str] = []
    if (not _given(args, "--worker-token", "--worker-token-file")
            and not os.environ.get("BORIDE_WORKER_TOKEN")
            and not os.environ.get("BORIDE_WORKER_TOKEN_FILE")
            and os.path.exists(TOKEN_SECRET)):
        token = ["--worker-token-file", TOKEN_SECRET]
    return _boride([*FRONT_ARGS, *token, *args])


def exposure_warning(container: str) -> str | None:
    """What is wrong with how this container publishes the API, if anything: a port published
    on every interface of the host is reachable by the components themselves (they dial the
    host's address; the engine's proxy hands their request in from the network's gateway,
    which boride must trust for the CLI's own requests)."""
    from boride.runtime.base import RuntimeFailure
    from boride.runtime.docker import connect
    from boride.runtime.docker.engine import ENGINE_ERRORS

    if not container:
        return None
    try:
        client = connect(timeout=10)
    except RuntimeFailure:
        return None  # the server says what is wrong with the engine
    try:
        ports = client.api.inspect_container(container)["HostConfig"].get("PortBindings") or {}
    except ENGINE_ERRORS:
        return None  # not a container this engine knows (boride runs elsewhere)
    finally:
        client.close()
    wide = sorted({f"{b.get('HostPort')}" for bindings in ports.values()
                   for b in bindings or [] if b.get("HostIp", "") in ("", "0.0.0.0", "::")})
    if not wide:
        return None
    return (f"port {', '.join(wide)} is published on every interface of the host: components "
            "can reach this API through the host's address. Publish it on loopback only "
            "(-p 127.0.0.1:9000:9000)")


def cleanup(args: list[str]) -> int:
    """``boride clean --all`` (or ``--session ID``): every boride container and volume."""
    if args and not (args[0] == "--session" and len(args) == 2):
        raise DaemonError(f"cleanup: unexpected arguments {' '.join(args)!r} (usage: cleanup "
                          "[--session ID])", EXIT_USAGE)
    return _boride(["clean", *(args or ["--all"])])


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "setup": setup, "start": start, "cleanup": cleanup, "worker": worker, "front": front}


def dispatch(argv: list[str]) -> int:
    if not argv:
        argv = ["start"]
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        print(usage(), end="")
        return 0
    if command in COMMANDS:
        from boride.settings import SettingError, check_environment

        try:  # before anything asks the engine (boride's own commands check again)
            check_environment()
        except SettingError as exc:
            raise DaemonError(str(exc), EXIT_USAGE) from None
        return COMMANDS[command](rest)
    if command == "--version" or command in boride_commands():
        return _boride(argv)
    known = ", ".join([*COMMANDS, *(n for n, t in boride_commands().items() if t)])
    raise DaemonError(f"unknown command {command!r} (commands: {known}; --help for more)",
                      EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    try:
        return dispatch(sys.argv[1:] if argv is None else argv)
    except DaemonError as exc:
        print(f"boride: {exc}", file=sys.stderr, flush=True)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, never a traceback
        from boride.errors import describe

        print(f"boride: {describe(exc)}", file=sys.stderr, flush=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
