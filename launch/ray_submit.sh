#!/usr/bin/env bash
# Submit a training job to a running Ray cluster with `ray job submit`.
#   RAY_ADDRESS=http://head-node:8265 launch/ray_submit.sh experiment=nano_gpu model.path=/models/nano
#
# The cluster: `ray start --head` on the head node (its dashboard, port 8265, takes the job; the
# project installs ray[default] for it), `ray start --address=<head-ip>:6379` on the others. With
# Ray's token authentication (RAY_AUTH_MODE=token, the default of recent Ray), the token the head
# wrote to ~/.ray/auth_token must be here too (or in RAY_AUTH_TOKEN).
#
# The job's driver runs on the head node with cluster.address=auto, so its rollout workers and
# learner ranks are scheduled across the whole cluster (placement groups). This checkout is
# uploaded as the job's working directory (so the code that runs is the code here); the Python
# that runs it is this checkout's .venv (RLVR_PYTHON to name another): every node needs the same
# environment at that path (`make setup` on a shared filesystem, or the same container image).
# Outputs go to $RLVR_OUTPUTS/<name> (default: outputs/ of this checkout), on the head node.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${RAY_ADDRESS:?set RAY_ADDRESS to the dashboard address of the cluster, e.g. http://head:8265}"
python=${RLVR_PYTHON:-$PWD/.venv/bin/python}
outputs=${RLVR_OUTPUTS:-$PWD/outputs}
[ -x "$PWD/.venv/bin/ray" ] || { echo "ray_submit.sh: no .venv here: run 'make setup' first" >&2; exit 2; }
exec "$PWD/.venv/bin/ray" job submit --address "$RAY_ADDRESS" --working-dir . \
    --runtime-env-json '{"excludes": [".venv", ".venv-vllm", "outputs", "multirun", ".git"]}' \
    -- "$python" -m rlvr.training.app cluster=ray "hydra.run.dir=$outputs/\${name}" "$@"
