"""What components can reach of boride's API (issue 8 item 5): nothing. Requests from a
components' network are refused before any route runs; the merger's internal routes
(``/merge``, ``/zip``) are not served on the public listener at all.

The Docker test is the real thing: ``boride serve --host 0.0.0.0 --token ... --runtime docker``
and a processor (``tests/components/probe_api.py``) that calls the API from inside its
container, at the network's gateway and at every other address of the host, with and without
the right token."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker.errors
import httpx
import pytest

from boride.runtime.base import ComponentNetworks
from boride.runtime.docker import NETWORK, DockerRuntime, Engine, connect
from boride.runtime.local import LocalRuntime
from boride.server import ServerConfig, create_app
from tests.docker_helpers import image_of, session_leftovers
from tests.helpers import archive_files
from tests.test_server_cli import serving
from tests.test_server_support import (
    build_body,
    new_id,
    problem,
    template_body,
    write_registry,
)

TOKEN = "isolation-test-token-0123456789"


def host_addresses() -> list[str]:
    """The host's IPv4 addresses but loopback (``ip -4 -o addr``)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    found = [line.split()[3].split("/")[0] for line in out.splitlines()]
    return [a for a in found if not a.startswith("127.")]


def network_gateways() -> list[str]:
    client = connect(timeout=30)
    try:
        ipam = client.api.inspect_network(NETWORK).get("IPAM") or {}
        return [str(c["Gateway"]) for c in ipam.get("Config") or [] if c.get("Gateway")]
    finally:
        client.close()


def attack_calls(victim: str) -> list[list[Any]]:
    """What a hostile component would try: every kind of route, another session's too."""
    return [["GET", "/", None], ["GET", "/metrics", None],
            ["POST", "/zip", {"target_dir": "/workspace/area"}],
            ["POST", f"/merge/{victim}", {"from_dirs": [], "to_dir": "/workspace/area/x"}],
            ["DELETE", "/cleanup", None],
            ["DELETE", f"/executor/{victim}", None]]


# --- the refusal itself, with made-up client addresses -------------------------------------

NETWORKS = ComponentNetworks(
    (ipaddress.ip_network("172.30.0.0/16"), ipaddress.ip_network("fd00:c0::/64")),
    frozenset({ipaddress.ip_address("172.30.0.1"), ipaddress.ip_address("fd00:c0::1")}))


@pytest.mark.parametrize(("address", "component"), [
    ("172.30.4.2", True), ("::ffff:172.30.4.2", True), ("fd00:c0::42", True),
    ("fd00:c0::42%eth0", True), ("172.30.0.1", False), ("fd00:c0::1", False),
    ("::ffff:172.30.0.1", False), ("127.0.0.1", False), ("::1", False), ("172.31.0.2", False),
    ("192.0.2.2", False), ("testclient", False), ("", False)])
def test_which_addresses_are_components(address: str, component: bool) -> None:
    assert NETWORKS.holds(address) is component
    assert ComponentNetworks().holds(address) is False  # the local runtime's: none


class _Runtime(LocalRuntime):
    """The local runtime, with components said to live on NETWORKS."""

    async def component_networks(self) -> ComponentNetworks:
        return NETWORKS


@pytest.fixture
async def app_for() -> AsyncIterator[Any]:
    app = create_app(ServerConfig(token=TOKEN), runtime=_Runtime())
    clients: list[httpx.AsyncClient] = []

    def client(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        clients.append(httpx.AsyncClient(transport=transport, base_url="http://boride"))
        return clients[-1]

    yield client
    for c in clients:
        await c.aclose()


async def test_component_addresses_are_refused_before_any_route(app_for: Any) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for address in ("172.30.4.2", "::ffff:172.30.4.2", "fd00:c0::42"):
        http = app_for(address)
        for method, path in (("GET", "/"), ("GET", "/metrics"), ("DELETE", "/cleanup"),
                             ("DELETE", f"/executor/{new_id()}"), ("POST", "/zip"),
                             ("GET", "/docs"), ("POST", "/executor/try")):
            for headers in ({}, auth):  # the right token does not help
                r = await http.request(method, path, headers=headers, json={})
                data = problem(r, 403)
                assert data["title"] == "Forbidden for components"
                assert address in data["detail"]
    for address in ("172.30.0.1", "127.0.0.1", "192.0.2.2"):  # the gateway, the host
        http = app_for(address)
        assert (await http.get("/")).json() == {"status": "OK"}
        assert (await http.get("/metrics", headers=auth)).status_code == 200
        problem(await http.get("/metrics"), 401)


class _Api:
    """The part of the engine API DockerRuntime.component_networks uses."""

    def __init__(self) -> None:
        self.subnet = "172.30.0.0/16"
        self.calls = 0
        self.broken = False

    def networks(self, names: list[str]) -> list[dict[str, Any]]:
        self.calls += 1
        if self.broken:
            raise docker.errors.APIError("engine gone")
        config = [{"Subnet": self.subnet, "Gateway": self.subnet.replace("0/16", "1")}]
        return [{"Name": NETWORK, "IPAM": {"Config": config}},
                {"Name": NETWORK + "-other", "IPAM": {"Config": [{"Subnet": "10.9.0.0/16"}]}}]


class _Client:
    """An engine client whose API is an :class:`_Api`."""

    def __init__(self, api: _Api) -> None:
        self.api = api

    def close(self) -> None:
        pass


async def test_docker_runtime_learns_the_networks_from_the_engine() -> None:
    api = _Api()
    runtime = DockerRuntime(engine=Engine(client=_Client(api)))  # type: ignore[arg-type]
    try:
        nets = await runtime.component_networks()
        assert nets.holds("172.30.0.7") and not nets.holds("172.30.0.1")
        assert not nets.holds("10.9.0.7")  # another network: not the components'
        assert await runtime.component_networks() == nets and api.calls == 1  # cached
        # the runtime made (or found) the network anew: asked again at once
        api.subnet = "172.31.0.0/16"
        runtime.network.id = "recreated"
        nets = await runtime.component_networks()
        assert api.calls == 2 and nets.holds("172.31.0.7") and not nets.holds("172.30.0.7")
        # an engine that does not answer: the last known networks stay
        api.broken = True
        runtime.network.id = "again"
        assert await runtime.component_networks() == nets and api.calls == 3
    finally:
        await runtime.aclose()


@pytest.mark.docker
def test_a_component_cannot_drive_boride(tmp_path: Path) -> None:
    probe = {"ref": "me/probe", "version": 1, "id": new_id(), "image": image_of("probe_api")}
    shipped = tmp_path / "template"
    shipped.mkdir()
    (shipped / "a.txt").write_text("a\n")
    tpl = {"ref": "me/site", "version": 1, "id": new_id(), "path": str(shipped)}
    registry = write_registry(tmp_path / "r.yaml", processors=[probe], templates=[tpl])
    template = template_body(tpl["id"], [probe])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving("--host", "0.0.0.0", "--token", TOKEN, "--runtime", "docker",
                 "--registry", registry, "--work-root", tmp_path / "work") as (_, url), \
            httpx.Client(base_url=url, headers=auth, timeout=180) as http:
        port = int(url.rsplit(":", 1)[1])
        victim, attacker = new_id(), new_id()
        assert http.post(f"/executor/{victim}/warm", json=template).status_code == 200
        config = {"port": port, "token": TOKEN, "calls": attack_calls(victim),
                  "hosts": [*host_addresses(), "127.0.0.1"]}
        assert http.post(f"/executor/{attacker}/warm", json=template).status_code == 200
        r = http.post(f"/executor/{attacker}",
                      json=build_body(template, [("me/probe", config)]))
        assert r.status_code == 200, r.text
        results = json.loads(archive_files(r.content)["probe.json"])
        (tmp_path / "probe.json").write_text(json.dumps(results, indent=1))
        gateways = network_gateways()
        assert {res["host"] for res in results} >= {*gateways, *host_addresses()}
        reached = [res for res in results if res["status"] is not None
                   and (res["status"], res["title"]) != (403, "Forbidden for components")]
        assert reached == [], json.dumps(reached, indent=1)
        # not vacuous: at the gateway every call got to boride and was refused there
        at_gateway = [res for res in results if res["host"] in gateways]
        assert len(at_gateway) == 2 * len(attack_calls(victim)) * len(gateways)
        assert all(res["status"] == 403 for res in at_gateway), at_gateway

        # the same calls from the host work (through loopback and through the gateway)
        for base in (url, *(f"http://{g}:{port}" for g in gateways)):
            assert httpx.get(base + "/").json() == {"status": "OK"}
            assert httpx.get(base + "/metrics", headers=auth).status_code == 200
        assert http.post("/zip", json={"target_dir": "/workspace/area"}).status_code == 404
        assert http.post(f"/merge/{victim}", json={"from_dirs": [], "to_dir": "/x"}
                         ).status_code == 404  # the merger's routes are not served here
        assert_helper_refuses(http, template, victim, attacker)
        assert http.delete(f"/executor/{victim}").json() == {"status": "OK"}  # still there
        assert http.delete(f"/executor/{attacker}").json() == {"status": "OK"}
    assert session_leftovers(victim) == [] and session_leftovers(attacker) == []


HELPER_CALLS: list[list[Any]] = [
    ["GET", "/", None], ["GET", "/names", None], ["POST", "/dirs", {}],
    ["POST", "/archive", {"tree": "/workspace/area"}],
    ["POST", "/remove-new", {"before": []}], ["POST", "/take-back", {"path": "/workspace/area"}],
    ["POST", "/merge", {"id": "x", "outputs": [], "target": "/workspace/area/x"}]]


def assert_helper_refuses(http: httpx.Client, template: dict[str, Any], victim: str,
                          attacker: str) -> None:
    """The sessions' helper containers (on the components' network, doing the file work)
    answer a component with 401 on every route, its own session's helper and another's,
    without a token or with a wrong one."""
    helpers = [f"cyan-merger-{attacker}", f"cyan-merger-{victim}"]
    config = {"port": 5560, "token": TOKEN, "calls": HELPER_CALLS, "hosts": helpers}
    r = http.post(f"/executor/{attacker}", json=build_body(template, [("me/probe", config)]))
    assert r.status_code == 200, r.text
    results = json.loads(archive_files(r.content)["probe.json"])
    mine = [res for res in results if res["host"] in helpers]
    assert len(mine) == 2 * len(HELPER_CALLS) * len(helpers)  # reached, and refused
    assert all(res["status"] == 401 for res in mine), json.dumps(mine, indent=1)
