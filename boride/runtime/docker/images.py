"""Whether the components' images are on the engine, pulled first when allowed
(``BORIDE_DOCKER_PULL=1``, a reachable, configured registry): checked before anything starts."""

from __future__ import annotations

import docker
import docker.errors

from boride import parallel
from boride.errors import describe
from boride.runtime.docker.engine import ENGINE_ERRORS, Engine, reason
from boride.types import Component


def split_image(image: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; the tag defaults to ``latest``."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag
    return image, "latest"


def _inspect(api: docker.APIClient, image: str) -> None:
    api.inspect_image(image)  # type: ignore[no-untyped-call]


def _pull(client: docker.DockerClient, image: str) -> None:
    repo, tag = split_image(image)
    client.images.pull(repo, tag=tag)  # raises when the image did not come


async def image_problem(engine: Engine, image: str, pull: bool) -> str | None:
    """None when ``image`` is on the engine (pulled first if ``pull``), else why not."""
    try:
        await engine.call(_inspect, image)
        return None
    except docker.errors.ImageNotFound:
        pass
    if not pull:
        return (f"image {image!r} is not on the Docker engine (build it, e.g. with "
                ".ci/docker-setup.sh, or set BORIDE_DOCKER_PULL=1 to pull it)")
    try:
        await engine.run(lambda: _pull(engine.client, image))
        return None
    except ENGINE_ERRORS as exc:
        return f"image {image!r} is not on the Docker engine and pulling it failed: " \
               f"{reason(exc)}"


async def image_problems(engine: Engine, components: list[Component], pull: bool) -> list[str]:
    """What stops these components from running on ``engine``, one line each: no image, or an
    image that is missing (and could not be pulled)."""
    found: list[str] = []
    users: dict[str, list[Component]] = {}
    for c in components:
        if not c.image:
            found.append(f"{c.kind.value} {c.name!r}: no 'image' to run it on Docker")
        else:
            users.setdefault(c.image, []).append(c)
    if not users:
        return found
    report = await parallel.run(lambda image: image_problem(engine, image, pull), list(users))
    for outcome in report.outcomes:
        why = outcome.value if outcome.ok else describe(outcome.error)
        if why:
            found.extend(f"{c.kind.value} {c.name!r}: {why}" for c in users[outcome.item])
    return found
