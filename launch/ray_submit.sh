#!/usr/bin/env bash
# Submit a training job to a running Ray cluster with `ray job submit`.
#   RAY_ADDRESS=http://head-node:8265 launch/ray_submit.sh experiment=nano_gpu model.path=/models/nano
# The job's driver runs on the head node with cluster.address=auto, so its rollout workers and
# learner ranks are scheduled across the whole cluster (placement groups). The working directory
# (this checkout) is uploaded with the job; every node needs the same Python environment
# (`make setup` on each, or a shared filesystem / container image).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster's dashboard address, e.g. http://head:8265}"
exec .venv/bin/ray job submit --address "$RAY_ADDRESS" --working-dir . \
    --runtime-env-json '{"excludes": [".venv", ".venv-vllm", "outputs", "multirun", ".git"]}' \
    -- python -m rlvr.train cluster=ray "$@"
