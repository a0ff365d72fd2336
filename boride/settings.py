"""Every ``BORIDE_*`` environment variable, in one place: what it means, its default, what it
may be, and one parse function each. :func:`check_environment` reads them all and refuses a bad
one in one line (the command line calls it before anything starts, exit 2); the code that uses
a setting reads it through here too (:func:`get`), so that what was checked is what is used.

An empty value is as if the variable were not set (as click treats its own ``envvar``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boride import config
from boride.errors import InputError

__all__ = ["SECRETS", "SETTINGS", "Setting", "SettingError", "check_environment", "get",
           "parse_size"]

MIN_MEMORY = 6 << 20  # Docker's own minimum; below it no Python component starts either
MAX_PIDS = 1 << 22  # the kernel's largest pid_max
_TRUE, _FALSE = ("1", "true", "yes", "on", "t", "y"), ("0", "false", "no", "off", "f", "n")
# a Docker image reference (registry[:port]/path[:tag][@digest]) or an image id (sha256:hex)
_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # a repository's path: lower case
_IMAGE = re.compile(rf"(?:[A-Za-z0-9.-]+(?::\d+)?/)?{_PART}(?:/{_PART})*"
                    r"(?::\w[\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?|sha256:[0-9a-f]{64}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # a bearer token: printable ASCII, no space


class SettingError(InputError, ValueError):
    """A ``BORIDE_*`` variable with a value boride cannot use; ``str()`` is one line naming it."""


def parse_size(text: str) -> int:
    """Bytes from ``"512m"``, ``"1g"``, ``"1048576"`` (k, m, g: powers of 1024; ``512mb`` and
    ``512mib`` too); ValueError otherwise."""
    m = re.fullmatch(r"\s*(\d{1,15})\s*([kmg]?)i?b?\s*", text.lower())
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"not a size: {text[:80]!r} (use e.g. 512m or 1g)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2)]


def _memory(text: str) -> int:
    size = parse_size(text)
    if size < MIN_MEMORY:
        raise ValueError(f"{text!r} is less than the smallest limit, 6m")
    return size


def _positive_int(limit: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or not 1 <= int(text) <= limit:
            raise ValueError(f"not a whole number from 1 to {limit}: {text[:80]!r}")
        return int(text)
    return parse


def _cpus(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.01 <= value <= 1024):
        raise ValueError(f"not a number of CPUs from 0.01 to 1024: {text[:80]!r}")
    return value


def _flag(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"not a yes or a no: {text[:80]!r} (use 1/true/yes/on or 0/false/no/off)")


def _image(text: str) -> str:
    if len(text) > 512 or not _IMAGE.fullmatch(text):
        raise ValueError(f"not an image name (e.g. boride/serve:latest): {text[:80]!r}")
    return text


def _token(text: str) -> str:
    if len(text) > 4096 or not _TOKEN.fullmatch(text):
        # (the value is a secret: never shown)
        raise ValueError("not a token: printable ASCII without spaces, at most 4096 characters")
    return text


def _token_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"{text!r} is not a file")
    try:
        with open(path, "rb") as f:
            data = f.read(4097)
    except OSError as exc:
        raise ValueError(f"cannot read {text!r}: {exc.strerror or exc}") from None
    try:
        _token(data.decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{text!r} holds no token (printable ASCII without spaces, at most "
                         "4096 characters)") from None
    return path


def _folder(text: str) -> Path:
    path = Path(text)
    if "\0" in text or (path.exists() and not path.is_dir()):
        raise ValueError(f"{text!r} is not a folder")
    return path


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in allowed:
            raise ValueError(f"not one of {', '.join(allowed)}: {text[:80]!r}")
        return text.lower()
    return parse


def _registries(text: str) -> list[str]:
    # click splits a multiple option's variable on white space: so does this
    found = text.split()
    for item in found:
        if item.startswith(("http://", "https://")):
            if not re.fullmatch(r"https?://[^/\s?#]+(/\S*)?", item):
                raise ValueError(f"not a URL: {item!r}")
        elif not Path(item).is_file():
            raise ValueError(f"{item!r} is neither an http(s):// URL nor a file")
    return found


@dataclass(frozen=True)
class Setting:
    """One variable: ``name``, what it means, its default as the user writes it (None: none),
    what it may be, and ``parse`` from its text to its value (ValueError saying why not)."""

    name: str
    meaning: str
    default: str | None
    valid: str
    parse: Callable[[str], Any]


SETTINGS: tuple[Setting, ...] = (
    Setting("BORIDE_CACHE", "serve: reuse unchanged processors' outputs (as --cache)", "off",
            "1/true/yes/on or 0/false/no/off", _flag),
    Setting("BORIDE_CACHE_DIR", "the cache's folder (as --cache-dir)",
            "$XDG_CACHE_HOME/boride", "a folder (made if missing)", _folder),
    Setting("BORIDE_CACHE_SIZE", "the cache's size bound (as --cache-size)", "2g",
            "a size: 1048576, 512k, 512m, 2g", parse_size),
    Setting("BORIDE_DOCKER_CPUS", "CPUs of each component container", "1",
            "a number from 0.01 to 1024", _cpus),
    Setting("BORIDE_DOCKER_MEMORY", "memory of each component container (swap included)",
            "512m", "a size of at least 6m", _memory),
    Setting("BORIDE_DOCKER_PIDS", "processes of each component container", "256",
            f"a whole number from 1 to {MAX_PIDS}", _positive_int(MAX_PIDS)),
    Setting("BORIDE_DOCKER_PULL", "pull missing images (else refuse them before starting)",
            "off", "1/true/yes/on or 0/false/no/off", _flag),
    Setting("BORIDE_HELPER_IMAGE", "the image of a Docker session's helper container",
            "boride/serve:latest", "an image name or id", _image),  # (docker.helper.IMAGE)
    Setting("BORIDE_HELPER_TOKEN", "(set by boride) the token of a session's helper", None,
            "printable ASCII without spaces", _token),
    Setting("BORIDE_LOCAL_FORK", "local runtime: fork Python components from a session's "
            "fork server that has imported the SDK (else each starts its own interpreter)",
            "on", "1/true/yes/on or 0/false/no/off", _flag),
    Setting("BORIDE_LOCAL_MEMORY", "data memory of each local component process", "512m",
            "a size of at least 6m", _memory),
    Setting("BORIDE_LOCAL_PIDS", "processes and threads of each local sandbox", "256",
            f"a whole number from 1 to {MAX_PIDS}", _positive_int(MAX_PIDS)),
    Setting("BORIDE_LOG_FORMAT", "run/serve/front: log lines as text or JSON objects (as "
            "--log-format)", "text", "text or json", _choice("text", "json")),
    Setting("BORIDE_LOG_LEVEL", "run/serve/front: the lowest level logged (as --log-level)",
            "warning (run), info (serve/front)", "debug, info, warning or error",
            _choice("debug", "info", "warning", "error")),
    Setting("BORIDE_REGISTRY", "serve: where component names are looked up (as --registry)",
            None, "registry files and http(s):// URLs, separated by spaces", _registries),
    Setting("BORIDE_TOKEN", "serve/front: the token clients must send (as --token)", None,
            "printable ASCII without spaces (serve/front: at least 16 characters)", _token),
    Setting("BORIDE_TOKEN_FILE", "serve: a file holding that token (as --token-file)",
            None, "a readable file holding a token", _token_file),
    Setting("BORIDE_WORKER_TOKEN", "front: the token the workers require (as --worker-token)",
            None, "printable ASCII without spaces", _token),
    Setting("BORIDE_WORKER_TOKEN_FILE", "front: a file holding that token "
            "(as --worker-token-file)", None, "a readable file holding a token", _token_file),
)
_BY_NAME = {s.name: s for s in SETTINGS}
#: What of boride's environment a component never gets: tokens, and the telemetry exporter's
#: headers (which may hold a collector's key).
SECRETS = frozenset({"BORIDE_TOKEN", "BORIDE_TOKEN_FILE", "BORIDE_WORKER_TOKEN",
                     "BORIDE_WORKER_TOKEN_FILE", "BORIDE_HELPER_TOKEN",
                     "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"})


def get(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The value of the setting ``name`` in ``env`` (default: this process's environment),
    parsed, or its default's (None when it has none); :class:`SettingError` when bad."""
    setting = _BY_NAME[name]
    text = (os.environ if env is None else env).get(name, "")
    if not text:
        return _parsed(setting, _DEFAULTS[name]) if name in _DEFAULTS else None
    return _parsed(setting, text)


# the defaults as parse takes them (those of SETTINGS are for people)
_DEFAULTS = {"BORIDE_CACHE": "0", "BORIDE_CACHE_SIZE": "2g", "BORIDE_DOCKER_PULL": "0",
             "BORIDE_DOCKER_CPUS": str(config.DEFAULT_CPUS),
             "BORIDE_DOCKER_MEMORY": config.DEFAULT_MEMORY,
             "BORIDE_DOCKER_PIDS": str(config.DEFAULT_PIDS),
             "BORIDE_LOCAL_FORK": "1", "BORIDE_LOCAL_MEMORY": config.DEFAULT_MEMORY,
             "BORIDE_LOCAL_PIDS": str(config.DEFAULT_PIDS)}


def _parsed(setting: Setting, text: str) -> Any:
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise SettingError(f"{setting.name}: {exc}") from None


def check_environment(env: Mapping[str, str] | None = None) -> None:
    """Parse every ``BORIDE_*`` setting; :class:`SettingError` (one line) for the first bad
    one."""
    for setting in SETTINGS:
        get(setting.name, env)
