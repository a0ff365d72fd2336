"""Build ``boride/serve:latest``, boride's own image, on the local engine (no registry needed).

Two images, each built FROM the one before:

* ``boride/serve-deps:latest``: ``boride/python-base:3.11`` + boride's runtime dependencies
  (``[project] dependencies`` of pyproject.toml, pinned as there; no dev dependencies; among
  them zlib-ng, pinned exactly, so that the helper's archives have the bytes boride's have),
  installed on the host with ``pip install --target`` and copied in, bytecode compiled, and the
  folders ``/workspace/area`` and ``/workspace/cyanprint``; rebuilt only when its label
  ``boride.deps`` (a digest of the dependency list, the base image and the recipe) differs;
* ``boride/serve:latest``: + the ``boride`` package, a last cheap layer; ``ENTRYPOINT
  python3 -m boride.daemon`` (``setup``, ``start``, ``cleanup``, or any ``boride`` command),
  ``CMD start``. Its label ``boride.source`` (:func:`source_digest`: the package's .py files and
  pyproject.toml) says whether it matches a working tree: :func:`serve_image_stale`,
  :func:`ensure_serve_image`.

Usage: ``python docker/serve_image.py [--force] [--base IMAGE]`` (``make image``); the tag is
``BORIDE_SERVE_IMAGE`` when set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "docker") not in sys.path:  # build_images.py lives next to this file
    sys.path.insert(0, str(ROOT / "docker"))

import docker  # noqa: E402
import docker.errors  # noqa: E402
from build_images import _tree, build  # noqa: E402

BASE_IMAGE = "boride/python-base:3.11"
#: The tag built; ``BORIDE_SERVE_IMAGE`` names another (a shared engine's sessions working on
#: different trees then do not rebuild one tag in turn; give the runtime the same tag through
#: ``BORIDE_HELPER_IMAGE``: the tests do so themselves).
SERVE_IMAGE = os.environ.get("BORIDE_SERVE_IMAGE") or "boride/serve:latest"
#: Its dependencies' image (``<BORIDE_SERVE_IMAGE>-deps`` with another tag: not shared either).
DEPS_IMAGE = (f"{SERVE_IMAGE}-deps" if os.environ.get("BORIDE_SERVE_IMAGE")
              else "boride/serve-deps:latest")
RECIPE_REV = "2"  # bump when the recipe below changes (both images are rebuilt)
PACKAGE = ROOT / "boride"
PYPROJECT = ROOT / "pyproject.toml"
SITE = "/opt/boride-deps"
CODE = "/opt/boride"
LAUNCHER = b'#!/bin/sh\nexec python3 -m boride "$@"\n'  # `boride ...` in the container


def log(msg: str) -> None:
    print(f"[serve-image] {msg}", file=sys.stderr, flush=True)


def package_files() -> list[Path]:
    """The files of the boride package that go into the image (no bytecode)."""
    return sorted(p for p in PACKAGE.rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and p.suffix != ".pyc")


def source_digest() -> str:
    """sha256 over the package's .py files and pyproject.toml (paths and contents)."""
    digest = hashlib.sha256(f"rev {RECIPE_REV}\n".encode())
    for path in [*(p for p in package_files() if p.suffix == ".py"), PYPROJECT]:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(ROOT).as_posix()}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def dependencies() -> list[str]:
    """boride's runtime dependencies, as pyproject.toml pins them."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [str(d) for d in project["dependencies"]]


def _label(client: docker.DockerClient, image: str, key: str) -> str | None:
    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        return None
    value = labels.get(key)
    return None if value is None else str(value)


def _deps_key(client: docker.DockerClient, base: str) -> str:
    try:
        base_id = str(client.images.get(base).id)
    except docker.errors.ImageNotFound:
        raise SystemExit(f"base image {base} is missing: run .ci/docker-setup.sh") from None
    text = json.dumps({"deps": dependencies(), "base": base_id, "rev": RECIPE_REV})
    return hashlib.sha256(text.encode()).hexdigest()


def ensure_deps_image(client: docker.DockerClient, base: str = BASE_IMAGE) -> bool:
    """Build :data:`DEPS_IMAGE` unless it holds these dependencies already; True if built."""
    key = _deps_key(client, base)
    if _label(client, DEPS_IMAGE, "boride.deps") == key:
        log(f"{DEPS_IMAGE} present")
        return False
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="boride-serve-deps-") as tmp:
        site = Path(tmp) / "site"
        log(f"pip install --target: {' '.join(dependencies())}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                        "--disable-pip-version-check", "--target", str(site),
                        *dependencies()], check=True)
        dockerfile = (
            f"FROM {base}\n"
            f"COPY site {SITE}\n"
            f"ENV PYTHONPATH={CODE}:{SITE} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n"
            f"RUN python3 -m compileall -q {SITE} > /dev/null"
            " && mkdir -p -m 0755 /workspace/area /workspace/cyanprint"
            " && python3 -c 'import fastapi, uvicorn, docker, httpx, pydantic, yaml, rich,"
            " zlib_ng.zlib_ng'\n"
            f"LABEL boride.image=serve-deps boride.deps={key}\n"
        )
        build(client, DEPS_IMAGE, dockerfile, _tree(site, "site"))
    log(f"{DEPS_IMAGE} built in {time.perf_counter() - t0:.1f}s")
    return True


def build_serve_image(client: docker.DockerClient) -> None:
    """:data:`SERVE_IMAGE`: the deps image + the boride package (the last layer)."""
    t0 = time.perf_counter()
    digest = source_digest()
    files = [(f"code/boride/{p.relative_to(PACKAGE).as_posix()}", p) for p in package_files()]
    with tempfile.TemporaryDirectory(prefix="boride-serve-") as tmp:
        launcher = Path(tmp) / "boride"
        launcher.write_bytes(LAUNCHER)
        launcher.chmod(0o755)
        dockerfile = (
            f"FROM {DEPS_IMAGE}\n"
            f"COPY code {CODE}\n"
            "COPY boride /usr/local/bin/boride\n"
            f"RUN python3 -m compileall -q {CODE} > /dev/null"
            " && python3 -c 'import boride.daemon, boride.cli'\n"
            'ENTRYPOINT ["python3", "-m", "boride.daemon"]\n'
            'CMD ["start"]\n'
            "EXPOSE 9000\n"
            f"LABEL boride.image=serve boride.source={digest}\n"
        )
        build(client, SERVE_IMAGE, dockerfile, [*files, ("boride", launcher)])
    log(f"{SERVE_IMAGE} built in {time.perf_counter() - t0:.1f}s (source {digest[:12]})")


def serve_image_stale(client: docker.DockerClient) -> bool:
    """Whether :data:`SERVE_IMAGE` is missing or was built from another working tree."""
    return _label(client, SERVE_IMAGE, "boride.source") != source_digest()


def ensure_serve_image(client: docker.DockerClient | None = None, *, force: bool = False,
                       base: str = BASE_IMAGE) -> bool:
    """Build :data:`SERVE_IMAGE` (and its deps image) when stale or ``force``; True if built."""
    own = client is None
    client = client or docker.from_env(timeout=900)
    try:
        rebuilt = ensure_deps_image(client, base)
        if force or rebuilt or serve_image_stale(client):
            build_serve_image(client)
            return True
        log(f"{SERVE_IMAGE} matches the working tree")
        return False
    finally:
        if own:
            client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--base", default=BASE_IMAGE)
    parser.add_argument("--force", action="store_true",
                        help="rebuild boride/serve even when it matches the working tree")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    ensure_serve_image(force=args.force, base=args.base)
    log(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
