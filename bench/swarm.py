"""Benchmark: N concurrent CLI create flows on a real swarm, one node vs two (issue 15).

The two-node swarm of tests/test_swarm.py (``.ci/swarm-node.sh up``: two engines on this one
machine, each in namespaces of its own; run as root), the stack deployed with
``deploy/swarm/deploy.sh``, a template that exists only as images (blob, Q&A, the example's
components). ``--clients`` ``cyanprint create`` flows at once through the front, every result
checked, with both nodes serving, then with node 2 drained (``docker node update
--availability drain``: its worker stops, the front finds one worker), alternated ``--rounds``
times. Both nodes share this machine's 2 cores, so no gain is expected; on real machines each
node brings its own cores. Everything is taken down at the end (``.ci/swarm-node.sh down``).

    .venv/bin/python bench/swarm.py [--clients 6] [--rounds 2] [--json docs/swarm_bench.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import EXAMPLES  # noqa: E402
from tests.docker_helpers import build_test_image, remove_test_images  # noqa: E402
from tests.test_registry_images import (  # noqa: E402
    BASE,
    QNA,
    Images,
    assert_expected,
    blob_archive,
    blob_dockerfile,
    cli_create,
    components_only_registry,
    expected_cyan,
    image_template,
    ref,
)
from tests.test_server_support import new_id  # noqa: E402
from tests.test_swarm import NODE, deploy, load_images, on_node, wait_until, workers  # noqa: E402


def build_images() -> Images:
    run = uuid.uuid4().hex[:8]
    made = Images((f"local/boride-bench-blob-{run}", "1"), (f"local/boride-bench-qna-{run}", "1"),
                  ("unused", "1"))
    unpack = json.dumps(["tar", "-xzf", "/cyanprint/artifact/cyan.tar.gz", "-C",
                         "/workspace/cyanprint", "--strip-components=1"])
    build_test_image(ref(made.blob), blob_dockerfile(unpack),
                     {"cyan.tar.gz": blob_archive(EXAMPLES / "template")})
    qna = QNA.replace("@CYAN@", repr(json.dumps(expected_cyan())))
    build_test_image(ref(made.qna), f"FROM {BASE}\nCOPY qna.py /qna.py\nUSER 65534:65534\n"
                                    'CMD ["python3", "/qna.py"]\n', {"qna.py": qna})
    return made


def flows(url: str, template: dict[str, Any], clients: int) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _, files in pool.map(lambda _: cli_create(url, template), range(clients)):
            assert_expected(files)
    return time.perf_counter() - t0


def set_node_2(available: bool, url: str, node2: str) -> None:
    r = on_node(1, "node", "update", "--availability", "active" if available else "drain",
                node2)
    assert r.returncode == 0, r.stderr
    wait_until(f"node 2's worker {'back' if available else 'gone'}", lambda: (
        any(w["node"] == node2 and w["healthy"] for w in workers(url)) == available),
        timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    made = build_images()
    results: dict[str, Any] = {"clients": args.clients, "two_nodes_s": [], "one_node_s": []}
    try:
        up = subprocess.run([str(NODE), "up"], capture_output=True, text=True, timeout=180)
        assert up.returncode == 0, up.stderr
        url = "http://" + subprocess.check_output([str(NODE), "addr"], text=True).strip() \
            + ":9000"
        with tempfile.TemporaryDirectory(prefix="boride-swarm-bench-") as tmp:
            load_images(Path(tmp), made)
            deploy(Path(tmp), components_only_registry(Path(tmp) / "registry.yaml"))
            node2 = on_node(2, "info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
            wait_until("two healthy workers", lambda: sum(
                w["healthy"] for w in workers(url)) == 2, timeout=120)
            template = image_template(new_id(), made)
            flows(url, template, 2)  # warm-up: templates warm on both
            for _ in range(args.rounds):
                results["two_nodes_s"].append(flows(url, template, args.clients))
                set_node_2(False, url, node2)
                results["one_node_s"].append(flows(url, template, args.clients))
                set_node_2(True, url, node2)
    finally:
        subprocess.run([str(NODE), "down"], capture_output=True, text=True, timeout=180)
        remove_test_images(ref(made.blob), ref(made.qna))
    for key in ("two_nodes", "one_node"):
        results[f"{key}_builds_per_s"] = args.clients / statistics.median(results[f"{key}_s"])
    print(f"{args.clients} CLI create flows at once through the front (seconds per round):")
    print(f"  two nodes: {results['two_nodes_s']}  {results['two_nodes_builds_per_s']:.2f} "
          "builds/s")
    print(f"  one node:  {results['one_node_s']}  {results['one_node_builds_per_s']:.2f} "
          "builds/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
