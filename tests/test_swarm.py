"""boride on a real two-node Docker Swarm (issue 15), end to end.

``.ci/swarm-node.sh up`` starts two engines on this machine, each in its own network and mount
namespace (node 1 the manager, node 2 a worker; the host's engine is not touched), loads the
images into both (no registry here), and ``deploy/swarm/deploy.sh`` deploys the stack. Then, the
way the CyanPrint CLI does it and through the front only:

* 6 ``cyanprint create`` flows at once (a template that exists only as images: blob, Q&A,
  components), every result compared with examples/expected; ``GET /workers`` shows that
  workers on two distinct nodes served sessions;
* a session bootstrapped, then every worker replaced (``docker service update --force``): the
  successors take the sessions over from their nodes' engines, the build succeeds;
* node 2 dies (its engine and all it ran are killed): new sessions still succeed; calls of the
  sessions that lived there answer 503 naming the session and the worker, ``DELETE`` 200;
* ``DELETE /cleanup``, then ``docker stack rm boride``: nothing of boride is left on node 1.

``.ci/swarm-node.sh down`` always runs at the end. Runs under CI=true (as root); elsewhere
with BORIDE_TEST_SWARM=1."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docker_helpers import ROOT, example_images, in_ci, serve_image_module
from tests.test_registry_images import (  # noqa: F401  (the images fixture, used by name)
    Images,
    assert_expected,
    build_and_delete,
    cli_create,
    components_only_registry,
    image_template,
    images,
    ok,
    post,
    qna_loop,
    ref,
)
from tests.test_server_support import new_id

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

NODE = ROOT / ".ci" / "swarm-node.sh"
DEPLOY = ROOT / "deploy" / "swarm" / "deploy.sh"
STACK = "boride"
NODE_IMAGE = "boride/serve:latest"  # the tag the stack runs on the nodes


def enabled() -> bool:
    return in_ci() or os.environ.get("BORIDE_TEST_SWARM", "") in ("1", "true")


def node_socket(n: int) -> str:
    return f"unix://{subprocess.check_output([str(NODE), 'socket', str(n)], text=True).strip()}"


def on_node(n: int, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", "-H", node_socket(n), *args], capture_output=True,
                          text=True, timeout=kw.pop("timeout", 300), **kw)


def wait_until(what: str, predicate: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, ValueError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def swarm() -> Iterator[str]:
    """The two-node swarm; yields the front's URL (port 9000 of node 1). Always taken down,
    whatever happened (the host is left as it was)."""
    if not enabled():
        pytest.skip("the two-node swarm test runs under CI=true (or BORIDE_TEST_SWARM=1): "
                    "it starts two engines in namespaces of their own (root)")
    if os.geteuid() != 0:
        pytest.fail("the two-node swarm needs root (network namespaces, a second dockerd)")
    try:
        up = subprocess.run([str(NODE), "up"], capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, f"the second node did not come up:\n{up.stderr[-3000:]}"
        address = subprocess.check_output([str(NODE), "addr"], text=True).strip()
        yield f"http://{address}:9000"
    finally:
        down = subprocess.run([str(NODE), "down"], capture_output=True, text=True, timeout=180)
        assert down.returncode == 0, f"taking the swarm down failed:\n{down.stderr[-3000:]}"


def load_images(tmp_path: Path, made: Images) -> None:
    """boride's image and every image a build needs, onto both nodes (docker save | load)."""
    module = serve_image_module()
    module.ensure_serve_image()
    serve = str(module.SERVE_IMAGE)
    wanted = [serve, *example_images(), ref(made.blob), ref(made.qna)]
    archive = tmp_path / "images.tar"
    subprocess.run(["docker", "save", "-o", str(archive), *wanted], check=True, timeout=300)
    with ThreadPoolExecutor(2) as pool:
        loads = [pool.submit(on_node, n, "load", "-q", "-i", str(archive)) for n in (1, 2)]
        for n, job in enumerate(loads, 1):
            r = job.result()
            assert r.returncode == 0, f"loading the images on node {n}: {r.stderr}"
    archive.unlink()
    for n in (1, 2):
        if serve != NODE_IMAGE:
            assert on_node(n, "tag", serve, NODE_IMAGE).returncode == 0


def deploy(tmp_path: Path, registry: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": node_socket(1),
           "BORIDE_SWARM_STATE": str(tmp_path / "state"), "BORIDE_FRONT_INTERVAL": "1"}
    r = subprocess.run([str(DEPLOY), "--registry", str(registry)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"deploy.sh failed:\n{r.stdout}\n{r.stderr}"


def workers(url: str) -> list[dict[str, Any]]:
    with httpx.Client(base_url=url, timeout=10) as http:
        answer: list[dict[str, Any]] = http.get("/workers").json()
        return answer


def open_session(url: str, template: dict[str, Any]) -> str:
    """A create flow up to its build: warmed, started, the Q&A answered."""
    sid = new_id()
    warmed = ok(post(url, f"/executor/{sid}/warm", template))
    ok(post(url, "/executor", {"session_id": sid, "template": template,
                               "write_vol_reference": warmed["vol_ref"],
                               "merger": {"merger_id": new_id()}}))
    return sid


def boride_left_on_node_1() -> list[str]:
    """Containers, volumes, services, networks, secrets and configs of boride on node 1."""
    left: list[str] = []
    for kind, args in (("container", ["ps", "-a", "--format", "{{.Names}} {{.Labels}}"]),
                       ("volume", ["volume", "ls", "--format", "{{.Name}} {{.Labels}}"]),
                       ("service", ["service", "ls", "--format", "{{.Name}}"]),
                       ("network", ["network", "ls", "--format", "{{.Name}}"]),
                       ("secret", ["secret", "ls", "--format", "{{.Name}}"]),
                       ("config", ["config", "ls", "--format", "{{.Name}}"])):
        r = on_node(1, *args)
        assert r.returncode == 0, r.stderr
        for line in r.stdout.splitlines():
            if kind in ("container", "volume"):
                if "boride" in line or "cyan" in line:
                    left.append(f"{kind} {line.split()[0]}")
            elif line.startswith(f"{STACK}_"):
                left.append(f"{kind} {line}")
    return left


@pytest.mark.timeout(600)  # the bound: bringing the nodes up and down included
def test_two_node_swarm(swarm: str, images: Images, tmp_path: Path) -> None:  # noqa: F811
    url = swarm
    load_images(tmp_path, images)
    deploy(tmp_path, components_only_registry(tmp_path / "registry.yaml"))
    node1 = on_node(1, "info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    node2 = on_node(2, "info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
    assert node1 and node2 and node1 != node2
    seen = wait_until("two healthy workers, one on each node", lambda: (
        {w["node"] for w in workers(url) if w["healthy"]} == {node1, node2}), timeout=120)
    assert seen

    # 6 CLI create flows at once, through the front
    template = image_template(new_id(), images)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: cli_create(url, template), range(6)))
    assert len({sid for sid, _ in results}) == 6
    for _, files in results:
        assert_expected(files)
    served = {w["node"]: w["sessions_total"] for w in workers(url)}
    assert served[node1] >= 1 and served[node2] >= 1, served
    assert sum(served.values()) == 6, served

    # a session waits (bootstrapped, its Q&A under way) while every worker is replaced (an
    # upgrade): each drains and leaves its sessions on its node's engine, its successor
    # takes them over and lists them, the front finds them there: the build succeeds
    waiting = open_session(url, template)
    before = {w["address"] for w in workers(url)}
    r = on_node(1, "service", "update", "--force", "--detach=false", f"{STACK}_worker",
                timeout=300)
    assert r.returncode == 0, r.stderr
    wait_until("both workers replaced and healthy", lambda: (
        {w["node"] for w in workers(url) if w["healthy"] and w["address"] not in before}
        == {node1, node2}), timeout=180)
    assert_expected(build_and_delete(url, waiting, template,
                                     qna_loop(url, template["principal"]["id"]), new_id()))

    # sessions left open on both nodes, then node 2 dies
    held = [open_session(url, template) for _ in range(4)]
    active = {w["node"]: w["sessions_active"] for w in workers(url)}
    assert active[node1] >= 1 and active[node2] >= 1, active
    killed = subprocess.run([str(NODE), "kill", "2"], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == 0, killed.stderr
    wait_until("the front seeing node 2's worker lost", lambda: [
        w for w in workers(url) if w["node"] == node2 and not w["healthy"]], timeout=60)

    # new sessions still succeed, on node 1
    with ThreadPoolExecutor(2) as pool:
        for _, files in pool.map(lambda _: cli_create(url, template), range(2)):
            assert_expected(files)
    # the lost sessions fail clearly; the others still build
    cyan = qna_loop(url, template["principal"]["id"])
    lost_worker = next(w["address"] for w in workers(url) if w["node"] == node2)
    outcomes = {}
    for sid in held:
        r = post(url, f"/executor/{sid}", {"template": template, "cyan": cyan,
                                           "merger_id": new_id()})
        outcomes[sid] = r.status_code
        if r.status_code == 503:
            data = r.json()
            assert data["title"] == "Worker lost", data
            assert sid in data["detail"] and lost_worker in data["detail"], data
            assert sid in data["data"][0], data
        else:
            assert r.status_code == 200, r.text[:2000]
        assert ok(httpx.delete(f"{url}/executor/{sid}", timeout=120)) == {"status": "OK"}
    assert sorted(outcomes.values()).count(503) == active[node2], outcomes
    assert sorted(outcomes.values()).count(200) == active[node1], outcomes

    # everything removed (workers leave their sessions and templates on SIGTERM for their
    # successors: DELETE /cleanup first, as docs/scaling.md says), then the stack: nothing of
    # boride left on the node that survived
    r = httpx.delete(f"{url}/cleanup", timeout=300)
    assert r.status_code == 200, r.text[:2000]
    r = on_node(1, "stack", "rm", STACK)
    assert r.returncode == 0, r.stderr
    wait_until("nothing of boride left on node 1",
               lambda: boride_left_on_node_1() == [] or None, timeout=120)
