#!/usr/bin/env bash
# Runs the service image the way deploy/k8s runs it and checks it, for anyone with a Docker
# engine (CI has none: deploy/k8s is schema-validated there instead):
#   docker build -t hcn-prerank . && scripts/docker-smoke.sh [IMAGE]
# Starts IMAGE with a read-only root filesystem as uid 10001, weights/ mounted read-only at
# /models, host networking (ports 50051, 8080, admin 8081 free); then checks readiness, one
# scored request (the README's), the user the server runs as, an admin reload, and that
# `docker stop` (SIGTERM) drains and exits 0. Removes the container at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${1:-hcn-prerank}
name=hcn-smoke-$$
fail() { echo "docker-smoke: FAIL: $*" >&2; docker logs "$name" >&2 || true; exit 1; }
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT

docker run -d --name "$name" --network host --read-only --user 10001 \
  -v "$PWD/weights:/models:ro" "$image" \
  --model /models/hcn-public.safetensors --tokens /models/tokens.safetensors \
  --candidates /models/candidates.safetensors >/dev/null
for _ in $(seq 100); do
  [[ $(curl -s -o /dev/null -w '%{http_code}' localhost:8080/health/ready) == 200 ]] && break
  sleep 0.2
done
[[ $(curl -s -o /dev/null -w '%{http_code}' localhost:8080/health/ready) == 200 ]] || fail "not ready"
[[ $(curl -s -o /dev/null -w '%{http_code}' localhost:8080/health/live) == 200 ]] || fail "not live"
answer=$(curl -s -X POST localhost:8080/v1/score -d '{"long": [600105056587], "short": [], "fields": {"age": 3, "gender": 1, "city": 7}, "dense": [0.1, 0.0, 2.5, 1.0], "candidates": [562228906506, 625780654166, 657913453622], "top_k": 2}')
python3 -c 'import json, sys; a = json.loads(sys.argv[1]); assert len(a["scores"]) == 3 and len(a["top_k"]) == 2, a' "$answer" \
  || fail "bad answer: $answer"
uid=$(docker top "$name" -o pid,uid | tail -1 | awk '{print $2}')
[[ $uid == 10001 ]] || fail "runs as uid $uid"
[[ $(curl -s -o /dev/null -w '%{http_code}' -X POST localhost:8081/admin/reload) == 200 ]] || fail "reload"
docker stop "$name" >/dev/null
[[ $(docker inspect "$name" --format '{{.State.ExitCode}}') == 0 ]] || fail "exit code after SIGTERM"
docker logs "$name" 2>&1 | grep -q 'stopped' || fail "no 'stopped' line after SIGTERM"
echo "docker-smoke: ok ($image: ready, scored, uid 10001, reloaded, drained on SIGTERM)"
