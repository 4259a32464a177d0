#!/usr/bin/env bash
# A two-node Ray cluster on this one machine, and a few GRPO steps on it with the rollout workers
# on one node and the learner ranks on the other: the multi-node path, checkable without a
# cluster. On real machines the same three commands run on different hosts (see the README):
#
#   head$    ray start --head --port=6379 --resources='{"rollout_node": 1}'
#   worker$  ray start --address=<head-ip>:6379 --resources='{"learner_node": 1}'
#   head$    rlvr-train experiment=two_node cluster.address=<head-ip>:6379
#
# Usage: launch/two_node_local.sh [OUTPUT_DIR] [hydra overrides...]
# Note: `ray stop` at the end stops every Ray process on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
out=${1:-outputs/two_node}
shift || true
port=${RLVR_RAY_PORT:-6391}
# Ray >= 2.5x authenticates with a token (~/.ray/auth_token, made by the head): every process
# that joins must use it. On real nodes copy that file or set RAY_AUTH_TOKEN (see the README).
export RAY_AUTH_MODE=token

"$BIN/ray" stop --force >/dev/null 2>&1 || true
trap '"$BIN/ray" stop --force >/dev/null 2>&1 || true' EXIT
# Each node advertises its role as a custom resource; the experiment asks rollout workers for
# "rollout_node" and learner ranks for "learner_node".
"$BIN/ray" start --head --port="$port" --num-cpus=2 --resources='{"rollout_node": 1}' \
    --include-dashboard=false --disable-usage-stats >/dev/null
"$BIN/ray" start --address="127.0.0.1:$port" --num-cpus=2 --resources='{"learner_node": 1}' \
    --disable-usage-stats >/dev/null
"$BIN/python" - "$port" <<'PY'
import sys, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", log_to_driver=False, configure_logging=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
print(f"Ray cluster: {len(nodes)} nodes:", ", ".join(
    f"{n['NodeID'][:8]} {sorted(k for k in n['Resources'] if k.endswith('_node'))}" for n in nodes))
assert len(nodes) == 2, "expected two nodes"
PY

"$BIN/rlvr-train" experiment=two_node cluster.address="127.0.0.1:$port" hydra.run.dir="$out" "$@"

"$BIN/python" - "$out/summary.json" <<'PY'
import json, sys
placement = json.load(open(sys.argv[1]))["placement"]
rollout, learner = set(placement["rollout_nodes"]), set(placement["learner_nodes"])
print(f"rollout workers on node(s) {[n[:8] for n in rollout]}, learner ranks on node(s) {[n[:8] for n in learner]}")
assert rollout and learner and not rollout & learner, "rollout and learner shared a node"
PY
