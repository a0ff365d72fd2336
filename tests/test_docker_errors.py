"""The Docker runtime's error paths against a fake engine (no Docker needed): what fails is
raised as :class:`RuntimeFailure` saying what is left and how to remove it, never swallowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests.exceptions

from boride.runtime.base import RuntimeFailure
from boride.runtime.docker import NETWORK, DockerRuntime, Engine
from boride.runtime.docker.helper import helper_image
from boride.types import Component, Kind


class _Api:
    """The engine calls open_workspace and problems make; ``down``: none answers."""

    def __init__(self, down: bool = False) -> None:
        self.down = down
        self.volumes_made: list[str] = []

    def _answer(self) -> None:
        if self.down:
            raise requests.exceptions.ConnectionError("connection refused")

    def containers(self, **_: Any) -> list[dict[str, Any]]:
        self._answer()
        return []

    def volumes(self, **_: Any) -> dict[str, Any]:
        self._answer()
        return {"Volumes": []}

    def networks(self, **_: Any) -> list[dict[str, Any]]:
        self._answer()
        return [{"Name": NETWORK, "Id": "n1"}]

    def create_volume(self, name: str, **_: Any) -> None:
        self._answer()
        raise docker.errors.APIError("no space left on device")

    def inspect_image(self, image: str) -> None:
        self._answer()
        raise docker.errors.ImageNotFound(f"no such image: {image}")


class _Client:
    def __init__(self, api: _Api) -> None:
        self.api = api

    def close(self) -> None:
        pass


def _runtime(api: _Api) -> DockerRuntime:
    return DockerRuntime(engine=Engine(client=_Client(api)))  # type: ignore[arg-type]


async def test_a_failed_open_says_why_and_can_be_tried_again(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    rt = _runtime(_Api())
    try:
        for _ in range(2):  # the failed open left no open session behind
            with pytest.raises(RuntimeFailure) as info:
                await rt.open_workspace("s1", tmp_path / "tpl", tmp_path / "root")
            assert str(info.value).startswith("cannot prepare the session on Docker: ")
            assert "no space left on device" in str(info.value)
    finally:
        await rt.aclose()


async def test_a_failed_open_whose_clean_up_fails_names_what_is_left(tmp_path: Path) -> None:
    (tmp_path / "tpl").mkdir()
    rt = _runtime(_Api(down=True))
    try:
        with pytest.raises(RuntimeFailure) as info:
            await rt.open_workspace("s2", tmp_path / "tpl", tmp_path / "root")
    finally:
        await rt.aclose()
    message = str(info.value)
    assert "cannot prepare the session on Docker" in message
    assert "label boride.session=s2" in message and "boride clean --session s2" in message


async def test_problems_is_awaited_and_names_each_component() -> None:
    rt = _runtime(_Api())
    try:
        found = await rt.problems([Component("p", Kind.PROCESSOR, image="x:1"),
                                   Component("q", Kind.PLUGIN, image="x:1"),
                                   Component("r", Kind.RESOLVER)])
    finally:
        await rt.aclose()
    assert found[0] == "resolver 'r': no 'image' to run it on Docker"
    assert sorted(found[1:3]) == [
        f"{who}: image 'x:1' is not on the Docker engine (build it, e.g. with "
        ".ci/docker-setup.sh, or set BORIDE_DOCKER_PULL=1 to pull it)"
        for who in ("plugin 'q'", "processor 'p'")]
    # boride's own image (every session's helper) is missing on this engine too
    assert found[3:] == [f"image '{helper_image()}' is not on the Docker engine (build it, "
                         "e.g. with .ci/docker-setup.sh, or set BORIDE_DOCKER_PULL=1 to pull "
                         "it) (boride's own image: build it with make image, or "
                         "docker/serve_image.py)"]
