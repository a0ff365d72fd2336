#!/usr/bin/env bash
# Prepare a Docker engine and boride's images on a Debian 12 machine (run as root).
#
# Idempotent; every step is skipped when its result is already there:
#   1. docker.io (daemon + CLI), debootstrap, docker-registry and iproute2 (tests) from Debian,
#      if missing;
#   2. dockerd started in the background when no engine answers (bounded wait);
#   3. the Python base image boride/python-base:3.11, built with debootstrap + `docker import`
#      (no image registry is reachable here);
#   4. the SDK image, the Node base image (Debian's nodejs) and the example / test component
#      images (docker/build_images.py);
#   5. boride's own image boride/serve:latest (docker/serve_image.py, `make image`): rebuilt only
#      when it does not match the working tree (its boride.source label).
#
# Environment: BORIDE_PYTHON (interpreter with boride's deps; default .venv/bin/python),
# BORIDE_DEBIAN_MIRROR (default: the first Debian URI in apt's sources), DOCKERD_LOG,
# DOCKERD_WAIT (seconds, default 60). The docker CLI is fine here; boride itself uses the API.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE_IMAGE=boride/python-base:3.11
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/boride-dockerd.log}
DOCKERD_WAIT=${DOCKERD_WAIT:-60}
START=$(date +%s)

log() { echo "[docker-setup +$(( $(date +%s) - START ))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

engine_answers() { timeout 15 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
dockerd_alive() { ps -C dockerd -o stat= 2>/dev/null | grep -qv '^Z'; }
start_dockerd() {
    log "starting dockerd (log: $DOCKERD_LOG)"
    # A dead pid file from a stopped session would make dockerd refuse to start.
    local pid
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [ -n "$pid" ] && ! ps -p "$pid" -o stat= 2>/dev/null | grep -qv '^Z'; then
        rm -f /var/run/docker.pid
    fi
    setsid nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
}

# 1. packages ---------------------------------------------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# the two-node swarm of tests/test_swarm.py (.ci/swarm-node.sh): network namespaces, veths
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# a private registry on loopback, for the test of pulling a missing image
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
if ((${#need[@]})); then
    [ "$(id -u)" = 0 ] || die "need root to install ${need[*]}"
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

# 2. engine -----------------------------------------------------------------------------------
if engine_answers; then
    log "engine answers ($(docker version --format '{{.Server.Version}}'))"
else
    if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ]; then
        die "DOCKER_HOST=$DOCKER_HOST but no engine answers there"
    fi
    [ "$(id -u)" = 0 ] || die "no engine answers and only root can start dockerd"
    starts=0
    deadline=$(( $(date +%s) + DOCKERD_WAIT ))
    while (( $(date +%s) < deadline )); do
        engine_answers && break
        # Start dockerd when none is alive (a dying or zombie one from a stopped session does
        # not count); start it again, a few times, if the one we started died.
        if ! dockerd_alive && ((starts < 5)); then
            start_dockerd
            starts=$((starts + 1))
        fi
        sleep 1
    done
    engine_answers || { tail -n 30 "$DOCKERD_LOG" >&2 || true; die "dockerd did not answer within ${DOCKERD_WAIT}s"; }
    log "engine answers ($(docker version --format '{{.Server.Version}}'))"
fi

# 3. base image -------------------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE present"
else
    mirror=${BORIDE_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        mirror=$( (grep -hE '^URIs:.*debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null || true) \
            | head -n1 | awk '{print $2}')
    fi
    if [ -z "$mirror" ]; then
        mirror=$( (grep -hE '^deb .*debian/? bookworm' /etc/apt/sources.list 2>/dev/null || true) \
            | head -n1 | awk '{print $2}')
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d /var/tmp/boride-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3 bookworm "$rootfs" "$mirror" \
        >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; die "debootstrap failed"; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/dev/*
    log "importing $BASE_IMAGE"
    tar -C "$rootfs" -c . | docker import \
        -c 'ENV LANG=C.UTF-8' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["python3"]' -m "boride base: debian bookworm minbase + python3" \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    docker run --rm "$BASE_IMAGE" python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
    log "$BASE_IMAGE built"
fi

# 4. SDK and component images; 5. boride's own image -------------------------------------
PY=${BORIDE_PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
"$PY" -c 'import docker, yaml' 2>/dev/null \
    || die "$PY lacks the docker SDK or PyYAML: install boride first (pip install -e .[dev])"
# (also boride/node-base, Debian's nodejs from .debs apt-get download-ed here, once)
"$PY" "$ROOT/docker/build_images.py" --base "$BASE_IMAGE"
"$PY" "$ROOT/docker/serve_image.py" --base "$BASE_IMAGE"
log "done"
