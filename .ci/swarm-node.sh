#!/usr/bin/env bash
# A real two-node Docker Swarm on this one machine, for the swarm test (run as root).
#
#   .ci/swarm-node.sh up        two engines, each in its own network and mount namespace,
#                               node 1 the swarm's manager, node 2 joined as a worker
#   .ci/swarm-node.sh kill N    node N dies: its engine and everything it ran are killed
#                               (as when the machine loses power)
#   .ci/swarm-node.sh down      kill both nodes, remove their namespaces, links, cgroups and
#                               data; the host and its own engine are left as they were
#   .ci/swarm-node.sh socket N  the path of node N's engine socket (DOCKER_HOST=unix://...)
#   .ci/swarm-node.sh addr N    node N's address on the link to the host (node 1 only)
#
# Each node is a `dockerd` started through `nsenter --net=/run/netns/bsw<N>` (not `ip netns
# exec`, which hides the cgroup mounts) inside its own mount namespace (`unshare -m`), where a
# private folder is bind-mounted over /run: there /var/run/docker.sock is that node's engine, so
# a container binding the socket drives its own node, as on a real machine. Own --data-root,
# --exec-root, --pidfile, --bip and --cgroup-parent. The host's engine is not touched: it is
# not made a swarm node, and port 9000 of node 1 is node 1's own (its own network namespace).
#
# Links: host <-> node 1 (192.168.231.1 / .2: the tests reach the front there), node 1 <->
# node 2 (192.168.232.1 / .2: the swarm's traffic). Both live in the nodes' namespaces and
# vanish with them. Environment: BSW_ROOT (data, default /var/lib/boride-swarm),
# BSW_WAIT (seconds for an engine to answer, default 60).
set -euo pipefail

BSW_ROOT=${BSW_ROOT:-/var/lib/boride-swarm}
RUN_ROOT=/run/boride-swarm
BSW_WAIT=${BSW_WAIT:-60}
HOST_LINK=(192.168.231.1 192.168.231.2)  # host, node 1
NODE_LINK=(192.168.232.1 192.168.232.2)  # node 1, node 2
START=$(date +%s)

log() { echo "[swarm-node +$(( $(date +%s) - START ))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

ns() { echo "bsw$1"; }
socket() { echo "$RUN_ROOT/n$1/docker.sock"; }
dk() { local n=$1; shift; docker -H "unix://$(socket "$n")" "$@"; }

engine_answers() { timeout 10 docker -H "unix://$(socket "$1")" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# Every process of node N: its daemons (in its network namespace) and its containers (in its
# cgroup parent, whatever namespaces they have).
node_pids() {
    local n=$1 name pids=()
    name=$(ns "$n")
    if [ -e "/run/netns/$name" ]; then
        mapfile -t pids < <(ip netns pids "$name" 2>/dev/null || true)
    fi
    local f
    for f in /sys/fs/cgroup/*/"$name"/cgroup.procs /sys/fs/cgroup/*/"$name"/*/cgroup.procs \
             /sys/fs/cgroup/*/"$name"/*/*/cgroup.procs; do
        [ -r "$f" ] && mapfile -t -O "${#pids[@]}" pids < "$f"
    done
    ((${#pids[@]})) && printf '%s\n' "${pids[@]}" | sort -un
    return 0
}

kill_node() {
    local n=$1 i pids
    for i in $(seq 1 20); do
        pids=$(node_pids "$n")
        [ -z "$pids" ] && return 0
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        sleep 0.25
    done
    die "node $n: processes still alive after SIGKILL: $(node_pids "$n" | tr '\n' ' ')"
}

remove_cgroups() {
    local name
    name=$(ns "$1")
    # deepest first
    find /sys/fs/cgroup/*/"$name" -depth -type d -exec rmdir {} \; 2>/dev/null || true
}

start_engine() {
    local n=$1 name run data
    name=$(ns "$n")
    run=$RUN_ROOT/n$n
    data=$BSW_ROOT/n$n
    mkdir -p "$run" "$data"
    log "node $n: starting dockerd (log: $data/dockerd.log)"
    # The mount namespace is private: nothing mounted there (the /run bind, the containers'
    # layers) reaches the host, and all of it goes when the node's last process dies.
    setsid nsenter --net="/run/netns/$name" unshare -m --propagation private \
        sh -c "mount --bind '$run' /run && exec dockerd \
            --host unix:///run/docker.sock --pidfile /run/docker.pid \
            --exec-root /run/docker --data-root '$data/docker' \
            --bip 172.31.$n.1/24 --cgroup-parent $name --log-level warn" \
        >>"$data/dockerd.log" 2>&1 </dev/null &
    local deadline=$(( $(date +%s) + BSW_WAIT ))
    until engine_answers "$n"; do
        (( $(date +%s) < deadline )) || { tail -n 20 "$data/dockerd.log" >&2; die "node $n: dockerd did not answer within ${BSW_WAIT}s"; }
        sleep 0.5
    done
    log "node $n: engine answers at $(socket "$n")"
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root"
    command -v dockerd >/dev/null || die "dockerd is missing (.ci/docker-setup.sh installs it)"
    if [ -e "/run/netns/$(ns 1)" ] || [ -e "/run/netns/$(ns 2)" ]; then
        log "a previous swarm is still here: taking it down first"
        down
    fi
    local n1 n2
    n1=$(ns 1); n2=$(ns 2)
    ip netns add "$n1"
    ip netns add "$n2"
    # host <-> node 1
    ip link add "${n1}h" type veth peer name eth0 netns "$n1"
    ip addr add "${HOST_LINK[0]}/30" dev "${n1}h"
    ip link set "${n1}h" up
    ip -n "$n1" addr add "${HOST_LINK[1]}/30" dev eth0
    ip -n "$n1" link set eth0 up
    # node 1 <-> node 2 (created in node 1, one end moved to node 2)
    ip -n "$n1" link add eth1 type veth peer name eth1 netns "$n2"
    ip -n "$n1" addr add "${NODE_LINK[0]}/30" dev eth1
    ip -n "$n1" link set eth1 up
    ip -n "$n2" addr add "${NODE_LINK[1]}/30" dev eth1
    ip -n "$n2" link set eth1 up
    ip -n "$n1" link set lo up
    ip -n "$n2" link set lo up
    start_engine 1
    start_engine 2
    log "swarm init on node 1 (${NODE_LINK[0]})"
    dk 1 swarm init --advertise-addr "${NODE_LINK[0]}" --listen-addr "${NODE_LINK[0]}:2377" >/dev/null
    local token
    token=$(dk 1 swarm join-token -q worker)
    log "node 2 joins"
    dk 2 swarm join --advertise-addr "${NODE_LINK[1]}" --listen-addr "${NODE_LINK[1]}:2377" \
        --token "$token" "${NODE_LINK[0]}:2377" >/dev/null
    local deadline=$(( $(date +%s) + BSW_WAIT ))
    until [ "$(dk 1 node ls --filter role=worker --format '{{.Status}}' 2>/dev/null)" = Ready ]; do
        (( $(date +%s) < deadline )) || die "node 2 is not Ready in the swarm within ${BSW_WAIT}s"
        sleep 0.5
    done
    log "two-node swarm ready: manager $(socket 1), worker $(socket 2); node 1 at ${HOST_LINK[1]}"
}

down() {
    local n
    for n in 2 1; do
        kill_node "$n"
        remove_cgroups "$n"
        if [ -e "/run/netns/$(ns "$n")" ]; then ip netns del "$(ns "$n")"; fi
    done
    ip link del "$(ns 1)h" 2>/dev/null || true
    rm -rf "$RUN_ROOT"
    if [ -d "$BSW_ROOT" ]; then
        # a mount left by a crashed run would make rm fail: only this tree's
        { grep -o " $BSW_ROOT/[^ ]*" /proc/mounts || true; } | sort -r \
            | while read -r m; do umount -l "$m" || true; done
        rm -rf "$BSW_ROOT"
    fi
    log "down: no node, namespace, link or data left"
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    kill) [ -n "${2:-}" ] || die "usage: $0 kill N"; kill_node "$2"; log "node $2 killed" ;;
    socket) socket "${2:-1}" ;;
    addr) echo "${HOST_LINK[1]}" ;;
    *) echo "usage: $0 up|down|kill N|socket N|addr" >&2; exit 2 ;;
esac
