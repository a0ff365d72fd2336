"""Helpers for the Docker tests and the Docker benchmark: engine check, leftovers by label,
the images ``.ci/docker-setup.sh`` builds (pipeline files that run them:
``tests.helpers.write_pipeline(..., images=True)``)."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import tarfile
from pathlib import Path
from types import ModuleType

import docker.errors
import yaml
from docker.types import Mount

from boride.runtime.base import RuntimeFailure
from boride.runtime.docker import (
    LABEL_MANAGED,
    LABEL_SESSION,
    SEEN_AREA,
    connect,
    volume_names,
)
from boride.runtime.docker.volumes import create_volume

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SETUP = ".ci/docker-setup.sh"


# BORIDE_SERVE_IMAGE: boride's own image is built (and used) under that tag, not
# boride/serve:latest (docker/serve_image.py); the helper containers then run it too.
if os.environ.get("BORIDE_SERVE_IMAGE") and not os.environ.get("BORIDE_HELPER_IMAGE"):
    os.environ["BORIDE_HELPER_IMAGE"] = os.environ["BORIDE_SERVE_IMAGE"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def image_of(component: str) -> str:
    """The image of ``tests/components/<component>.py`` (see docker/build_images.py)."""
    return f"local/boride-test-{component.replace('_', '-')}:1"


def example_images() -> list[str]:
    """The example's component images, and its template's Q&A server (registry.yaml)."""
    images = []
    for name in ("pipeline.yaml", "registry.yaml"):
        data = yaml.safe_load((EXAMPLES / name).read_text())
        images += [str(c["image"]) for sec in ("processors", "resolvers", "plugins", "templates")
                   for c in data.get(sec) or [] if c.get("image")]
    return sorted(set(images))


REQUIRED_TEST_IMAGES = ("ok_processor", "ok_resolver", "ok_plugin", "exit_at_start", "hang",
                        "never_ready", "die_during_call", "write_template", "fail_500",
                        "probe_api", "node_processor")


@functools.cache
def docker_problem() -> str | None:
    """Why the Docker tests cannot run here (one line), or None."""
    try:
        client = connect(timeout=20)
    except RuntimeFailure as exc:
        return str(exc)
    try:
        missing = []
        for image in [*example_images(), *map(image_of, REQUIRED_TEST_IMAGES)]:
            try:
                client.images.get(image)
            except Exception:
                missing.append(image)
        if missing:
            return (f"{len(missing)} test image(s) missing on the engine (e.g. {missing[0]}); "
                    f"run {SETUP} as root")
        if (not os.environ.get("BORIDE_HELPER_IMAGE")
                or os.environ.get("BORIDE_SERVE_IMAGE") == os.environ["BORIDE_HELPER_IMAGE"]):
            # every session's helper runs boride's own image: it must be this tree's code
            serve_image_module().ensure_serve_image(client)
    finally:
        client.close()
    return None


def serve_image_module() -> ModuleType:
    """docker/serve_image.py (loaded by path: the repository's docker/ folder would shadow
    the docker SDK as a package)."""
    spec = importlib.util.spec_from_file_location("serve_image",
                                                  ROOT / "docker" / "serve_image.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def labelled(labels: dict[str, str | None]) -> list[str]:
    """Names of every container and volume carrying all ``labels`` (None: any value)."""
    client = connect(timeout=30)
    try:
        filters = {"label": [k if v is None else f"{k}={v}" for k, v in labels.items()]}
        names = [str(c["Names"][0]).lstrip("/")
                 for c in client.api.containers(all=True, filters=filters)]
        names += [str(v["Name"]) for v in client.api.volumes(filters=filters).get("Volumes")
                  or []]
        return names
    finally:
        client.close()


def session_leftovers(session: str) -> list[str]:
    return labelled({LABEL_SESSION: session})


def managed_sessions() -> set[str]:
    """Session ids of every boride container or volume on the engine."""
    client = connect(timeout=30)
    try:
        filters = {"label": [LABEL_MANAGED]}
        found = {c["Labels"].get(LABEL_SESSION, "")
                 for c in client.api.containers(all=True, filters=filters)}
        found |= {(v.get("Labels") or {}).get(LABEL_SESSION, "")
                  for v in client.api.volumes(filters=filters).get("Volumes") or []}
        return found - {""}
    finally:
        client.close()


def build_context(files: dict[str, str | bytes]) -> io.BytesIO:
    """A build context tar of ``files`` (name -> text or bytes), owned by root, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_test_image(tag: str, dockerfile: str, files: dict[str, str | bytes]) -> None:
    """Build ``tag`` on the engine from a Dockerfile and files (no registry needed); a failed
    build fails the test with the builder's last lines."""
    client = connect(timeout=300)
    try:
        output: list[str] = []
        context = build_context({"Dockerfile": dockerfile, **files})
        for chunk in client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                                      forcerm=True, decode=True):
            assert "error" not in chunk, f"building {tag}: {chunk}\n{''.join(output[-20:])}"
            output.append(str(chunk.get("stream", "")))
    finally:
        client.close()


def remove_test_images(*tags: str) -> None:
    """Remove images a test built (never anything else)."""
    client = connect(timeout=120)
    try:
        for tag in tags:
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(tag, force=True)
    finally:
        client.close()


def make_volume(session: str) -> str:
    """A session's area volume, labelled as boride labels it."""
    client = connect(timeout=30)
    try:
        _, area_vol = volume_names(session)
        create_volume(client.api, session, area_vol, "area")
        return area_vol
    finally:
        client.close()


def make_holder(api: docker.APIClient, volume: str, labels: dict[str, str]) -> str:
    """A container (created, never started) mounting ``volume``: the engine refuses to remove
    the volume while it exists."""
    created = api.create_container(
        image_of("ok_processor"), labels=labels, host_config=api.create_host_config(
            mounts=[Mount(SEEN_AREA, volume, type="volume", no_copy=True)]))
    return str(created["Id"])


def remove_holders(volume: str) -> None:
    """Remove ``volume`` and every container holding it (what a test made)."""
    client = connect(timeout=30)
    try:
        for c in client.api.containers(all=True, filters={"volume": volume}):
            client.api.remove_container(c["Id"], force=True)
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_volume(volume, force=True)
    finally:
        client.close()
