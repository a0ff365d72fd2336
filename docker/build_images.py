"""Build boride's component images on the local engine (no registry needed).

Layers, each built FROM the one before:

* ``boride/python-base:3.11``: Debian bookworm minbase + python3 (``.ci/docker-setup.sh``
  makes it with debootstrap + ``docker import``);
* ``boride/cyanprint-python:<sdk version>``: + cyanprintsdk and its dependencies, installed on
  the host with ``pip install --target`` and copied in (the image's Python is 3.11 like the
  host's); skipped when present, unless ``--rebuild-sdk``;
* ``boride/node-base:<rev>``: the Python base + Debian's ``nodejs`` (bookworm's, from .debs
  ``apt-get download``-ed on the host: only the packages the base image lacks, installed with
  ``dpkg -i``; no image registry and no network inside the build); skipped when present;
* ``local/boride-test-node-processor:1``: ``tests/components/node/processor.js`` on it;
* one *app* image per folder of components (the example folder, ``tests/components``): the
  folder's files copied to ``/app``;
* one image per component: the app image with ``CMD`` = the component's command, tagged as the
  pipeline's ``image:`` says (also the templates of a ``registry.yaml`` next to the pipeline:
  their Q&A servers) (``local/boride-example-upper:1``) or, for the test components,
  ``local/boride-test-<name>:1`` (``ok_processor.py`` -> ``local/boride-test-ok-processor:1``).

App and component images are rebuilt on every run; the engine's build cache makes that cheap
when nothing changed. Usage: ``python docker/build_images.py [--pipeline FILE ...]``;
``--only STEM`` (repeatable) builds just those test components (and their app image), leaving
every other image as it is.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import docker
import yaml

ROOT = Path(__file__).resolve().parent.parent
SDK_VERSION = "2.2.0"
SDK_IMAGE = f"boride/cyanprint-python:{SDK_VERSION}"
SDK_REV = "2"  # bump to rebuild the SDK image when its recipe changes
TEST_COMPONENTS = ROOT / "tests" / "components"
NODE_COMPONENTS = TEST_COMPONENTS / "node"
NODE_IMAGE = "boride/node-base:1"
NODE_PROCESSOR_IMAGE = "local/boride-test-node-processor:1"
APP_EXCLUDE = frozenset({"template", "expected", "__pycache__", ".pytest_cache", ".mypy_cache"})
LABEL = "boride.image"


def log(msg: str) -> None:
    print(f"[build-images] {msg}", file=sys.stderr, flush=True)


def test_image(stem: str) -> str:
    """The image name of ``tests/components/<stem>.py``."""
    return f"local/boride-test-{stem.replace('_', '-')}:1"


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _context(dockerfile: str, files: Iterable[tuple[str, Path]] = ()) -> io.BytesIO:
    """A build context tar: the Dockerfile (ignored by COPY) and the given files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add(tar, "Dockerfile", dockerfile.encode())
        _add(tar, ".dockerignore", b"Dockerfile\n.dockerignore\n")
        for arcname, path in files:
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isdir():
                info.mode = 0o755
                tar.addfile(info)
            elif info.isfile():
                info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    buf.seek(0)
    return buf


def _tree(base: Path, prefix: str, exclude: frozenset[str] = frozenset()) -> list[tuple[str, Path]]:
    """Every file and folder below ``base``, but symlinks and paths with a part in ``exclude``."""
    out: list[tuple[str, Path]] = []
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if any(part in exclude for part in rel.parts) or path.is_symlink():
            continue
        out.append((f"{prefix}/{rel.as_posix()}", path))
    return out


def build(client: docker.DockerClient, tag: str, dockerfile: str,
          files: Iterable[tuple[str, Path]] = ()) -> str:
    """Build ``tag`` with the classic builder through the engine API; return the image id."""
    ctx = _context(dockerfile, files)
    image_id = ""
    lines: list[str] = []
    for chunk in client.api.build(fileobj=ctx, custom_context=True, tag=tag, rm=True,
                                  forcerm=True, decode=True):
        if "error" in chunk:
            detail = "".join(lines[-20:])
            raise SystemExit(f"building {tag} failed: {chunk['error'].strip()}\n{detail}")
        if "stream" in chunk:
            lines.append(chunk["stream"])
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    return image_id or str(client.images.get(tag).id)


def ensure_sdk_image(client: docker.DockerClient, base: str, rebuild: bool) -> None:
    if not rebuild:
        try:
            labels = client.images.get(SDK_IMAGE).labels or {}
            if labels.get("boride.image.rev") == SDK_REV:
                log(f"{SDK_IMAGE} present")
                return
            log(f"{SDK_IMAGE} is of an older recipe: rebuilding")
        except docker.errors.ImageNotFound:
            pass
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        raise SystemExit(f"base image {base} is missing: run .ci/docker-setup.sh") from None
    with tempfile.TemporaryDirectory(prefix="boride-sdk-") as tmp:
        site = Path(tmp) / "site"
        log(f"pip install --target cyanprintsdk=={SDK_VERSION}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
                        "--disable-pip-version-check", "--target", str(site),
                        f"cyanprintsdk=={SDK_VERSION}"], check=True)
        dockerfile = (
            f"FROM {base}\n"
            "COPY site /opt/cyanprint-sdk\n"
            "ENV PYTHONPATH=/opt/cyanprint-sdk PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n"
            # Bytecode compiled once here: containers run with a read-only root file system
            # and would otherwise compile the SDK at every start (about 0.3 s of CPU each).
            "RUN python3 -m compileall -q /opt/cyanprint-sdk > /dev/null"
            " && python3 -c 'import cyanprintsdk.main, aiohttp, pydantic'\n"
            "USER 65534:65534\n"
            f"LABEL {LABEL}=sdk boride.sdk=cyanprintsdk=={SDK_VERSION} "
            f"boride.image.rev={SDK_REV}\n"
        )
        build(client, SDK_IMAGE, dockerfile, _tree(site, "site"))
    log(f"{SDK_IMAGE} built")


def _apt(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def debian_nodejs() -> str:
    """The version of Debian's own ``nodejs`` package (not another repository's, such as
    NodeSource's), after ``apt-get update`` when apt knows none."""
    for attempt in (1, 2):
        for line in _apt("apt-cache", "madison", "nodejs").splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) == 3 and "debian" in parts[2] and "nodesource" not in parts[2]:
                return parts[1]
        if attempt == 1:
            log("apt knows no Debian nodejs: apt-get update")
            _apt("apt-get", "update", "-qq")
    raise SystemExit("apt knows no Debian nodejs package (apt-cache madison nodejs)")


def _node_debs(client: docker.DockerClient, base: str, folder: Path) -> None:
    """Download into ``folder`` Debian's nodejs and what of its dependencies ``base`` lacks."""
    version = debian_nodejs()
    out = client.containers.run(base, ["dpkg-query", "-W", "-f", "${Package}\\n"], remove=True)
    installed = set(out.decode().split())
    deps = _apt("apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                f"nodejs={version}")
    names = sorted({n for n in deps.splitlines() if n and not n.startswith((" ", "<"))})
    wanted = [f"nodejs={version}" if n == "nodejs" else n for n in names if n not in installed]
    log(f"apt-get download {' '.join(wanted)}")
    folder.chmod(0o755)  # apt downloads as _apt
    _apt("apt-get", "download", "-qq", *wanted, cwd=folder)


def ensure_node_image(client: docker.DockerClient, base: str) -> None:
    """``NODE_IMAGE``: ``base`` + Debian's nodejs; skipped when present."""
    try:
        client.images.get(NODE_IMAGE)
        log(f"{NODE_IMAGE} present")
        return
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="boride-node-") as tmp:
        debs = Path(tmp) / "debs"
        debs.mkdir()
        _node_debs(client, base, debs)
        build(client, NODE_IMAGE,
              f"FROM {base}\nCOPY debs /tmp/debs\n"
              "RUN dpkg -i /tmp/debs/*.deb > /dev/null && rm -rf /tmp/debs && node --version\n"
              f"USER 65534:65534\nLABEL {LABEL}=node\n", _tree(debs, "debs"))
    log(f"{NODE_IMAGE} built")


def build_node_components(client: docker.DockerClient, base: str) -> None:
    """The Node test components (``tests/components/node``), on ``NODE_IMAGE``."""
    ensure_node_image(client, base)
    build(client, NODE_PROCESSOR_IMAGE,
          f"FROM {NODE_IMAGE}\nCOPY app /app\nWORKDIR /app\nUSER 65534:65534\n"
          f'CMD ["node", "/app/processor.js"]\nLABEL {LABEL}=component\n',
          _tree(NODE_COMPONENTS, "app"))
    log(f"{NODE_PROCESSOR_IMAGE} built")


def components_of(pipeline: Path) -> list[tuple[str, list[str]]]:
    """(image, command) of every component of a pipeline file that names both."""
    data: dict[str, Any] = yaml.safe_load(pipeline.read_text()) or {}
    found: list[tuple[str, list[str]]] = []
    for section in ("processors", "resolvers", "plugins", "templates"):
        for entry in data.get(section) or []:
            image, command = entry.get("image"), entry.get("command")
            if image and command:
                found.append((str(image), [str(c) for c in command]))
    return found


def build_app(client: docker.DockerClient, app_tag: str, folder: Path,
              components: list[tuple[str, list[str]]]) -> list[str]:
    """One app image holding ``folder`` at /app, then one image per component."""
    t0 = time.perf_counter()
    build(client, app_tag,
          f"FROM {SDK_IMAGE}\nCOPY app /app\nWORKDIR /app\nUSER 65534:65534\n"
          f"LABEL {LABEL}=app\n", _tree(folder, "app", APP_EXCLUDE))
    built = []
    for image, command in components:
        build(client, image, f"FROM {app_tag}\nCMD {json.dumps(command)}\n"
                             f"LABEL {LABEL}=component\n")
        built.append(image)
    log(f"{app_tag}: {len(built)} component image(s) in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(built))
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="boride/python-base:3.11")
    parser.add_argument("--pipeline", action="append", type=Path,
                        help="pipeline file whose components to build (default: the example)")
    parser.add_argument("--no-tests", action="store_true", help="skip tests/components")
    parser.add_argument("--rebuild-sdk", action="store_true")
    parser.add_argument("--only", action="append", metavar="STEM",
                        help="build only this tests/components image (repeatable; no example "
                             "images unless --pipeline is given)")
    args = parser.parse_args(argv)

    client = docker.from_env(timeout=900)
    ensure_sdk_image(client, args.base, args.rebuild_sdk)
    pipelines = args.pipeline or ([] if args.only else [ROOT / "examples" / "pipeline.yaml"])
    for pipeline in pipelines:
        if not pipeline.is_file():
            raise SystemExit(f"{pipeline}: no such pipeline file")
        folder = pipeline.resolve().parent
        name = folder.name.replace("_", "-").lower()
        comps = components_of(pipeline)
        registry = folder / "registry.yaml"  # its templates' Q&A servers, when it has one
        if registry.is_file():
            comps += [c for c in components_of(registry) if c not in comps]
        build_app(client, f"boride/app-{name}:latest", folder, comps)
    if not args.no_tests and TEST_COMPONENTS.is_dir():
        comps = [(test_image(p.stem), ["python3", p.name])
                 for p in sorted(TEST_COMPONENTS.glob("*.py")) if not p.name.startswith("_")
                 and (not args.only or p.stem in args.only)]
        if args.only and len(comps) != len(set(args.only)):
            raise SystemExit(f"--only: no such component in {TEST_COMPONENTS}: {args.only}")
        build_app(client, "boride/app-tests:latest", TEST_COMPONENTS, comps)
    if not args.no_tests and not args.only:
        build_node_components(client, args.base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
