#!/usr/bin/env bash
# Deploy boride on the swarm the local engine manages (DOCKER_HOST honoured) as the stack
# "boride": a worker on every node, the front on port 9000 of a manager. See docs/scaling.md.
#
#   deploy/swarm/deploy.sh [--registry FILE] [--image IMAGE] [--stack NAME] [--port PORT]
#                          [--no-wait]
#
# --registry FILE  the registry file (components and templates, as for boride serve
#                  --registry), handed to the workers as a swarm config (a new config when the
#                  file changes); without it, an empty registry
# --image IMAGE    boride's image (default boride/serve:latest); it and every component image
#                  must be on every node (a registry on a real cluster: docs/scaling.md)
# The shared token between the front and the workers is a swarm secret made from a random
# token kept in $BORIDE_SWARM_STATE (default /var/lib/boride/swarm, 0600), the same on every
# deploy. Images are not resolved against a registry (--resolve-image never; a node would
# otherwise wait for a registry before using its local image): set BORIDE_RESOLVE_IMAGE=always
# on a cluster with a registry. Waits (up to BORIDE_DEPLOY_WAIT seconds, default 180) until
# every service runs on every node it should. Remove with: docker stack rm boride
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STACK=boride
IMAGE=boride/serve:latest
REGISTRY=
PORT=9000
WAIT=1
STATE=${BORIDE_SWARM_STATE:-/var/lib/boride/swarm}
DEADLINE_S=${BORIDE_DEPLOY_WAIT:-180}

log() { echo "[deploy +${SECONDS}s] $*" >&2; }
die() { echo "deploy.sh: $*" >&2; exit 1; }

while (($#)); do
    case "$1" in
        --registry) REGISTRY=${2:?--registry FILE}; shift 2 ;;
        --image) IMAGE=${2:?--image IMAGE}; shift 2 ;;
        --stack) STACK=${2:?--stack NAME}; shift 2 ;;
        --port) PORT=${2:?--port PORT}; shift 2 ;;
        --no-wait) WAIT=0; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (--help)" ;;
    esac
done

[ "$(docker info --format '{{.Swarm.ControlAvailable}}' 2>/dev/null)" = true ] \
    || die "the engine at ${DOCKER_HOST:-unix:///var/run/docker.sock} is not a swarm manager (docker swarm init)"
docker image inspect "$IMAGE" >/dev/null 2>&1 \
    || log "WARNING: $IMAGE is not on this node: every node must have it (docker save | docker load, or a registry)"

mkdir -p "$STATE"
chmod 0700 "$STATE"
TOKEN_FILE=$STATE/token
if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE")
    log "new shared token in $TOKEN_FILE"
fi
if [ -n "$REGISTRY" ]; then
    [ -f "$REGISTRY" ] || die "no registry file $REGISTRY"
    REGISTRY_FILE=$(cd "$(dirname "$REGISTRY")" && pwd)/$(basename "$REGISTRY")
else
    REGISTRY_FILE=$STATE/empty-registry.yaml
    printf 'processors: []\nplugins: []\nresolvers: []\ntemplates: []\n' >"$REGISTRY_FILE"
    log "no --registry: an empty registry (every component name is unknown)"
fi
# swarm configs and secrets cannot change: a new name for new contents
digest() { sha256sum "$1" | cut -c1-12; }
export BORIDE_IMAGE=$IMAGE BORIDE_FRONT_PORT=$PORT
export BORIDE_TOKEN_FILE=$TOKEN_FILE BORIDE_TOKEN_SECRET=${STACK}_token_$(digest "$TOKEN_FILE")
export BORIDE_REGISTRY_FILE=$REGISTRY_FILE BORIDE_REGISTRY_CONFIG=${STACK}_registry_$(digest "$REGISTRY_FILE")

log "docker stack deploy $STACK (image $IMAGE, registry ${REGISTRY:-empty}, front on port $PORT)"
docker stack deploy --resolve-image "${BORIDE_RESOLVE_IMAGE:-never}" --prune \
    -c "$HERE/stack.yml" "$STACK" >&2
((WAIT)) || exit 0

# every service's tasks running where they should (global: one per node), 3 checks in a row
# (a task that fails at start is counted running for a moment)
deadline=$((SECONDS + DEADLINE_S))
steady=0
while ((steady < 3)); do
    pending=$(docker service ls --filter "label=com.docker.stack.namespace=$STACK" \
        --format '{{.Name}} {{.Replicas}}' | awk '{split($2, r, "/"); if (r[1] != r[2] || r[2] == 0) print $1 " " $2}')
    if [ -z "$pending" ]; then steady=$((steady + 1)); else steady=0; fi
    if ((SECONDS > deadline)); then
        docker stack ps --no-trunc "$STACK" >&2 || true
        die "not running after ${DEADLINE_S}s: $pending"
    fi
    sleep 1
done
log "stack $STACK runs: $(docker service ls --filter "label=com.docker.stack.namespace=$STACK" --format '{{.Name}} {{.Replicas}}' | tr '\n' ' ')"
