#!/usr/bin/env bash
# Run a training job on this machine: Ray starts inside the job (cluster=local).
#   launch/local.sh                          # the default CPU job
#   launch/local.sh learner.lr=3e-4 name=lr3e-4
# Arguments are Hydra overrides. Relaunching the same command resumes from the newest checkpoint
# in outputs/<name>.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/rlvr-train ] || make setup
exec .venv/bin/rlvr-train "$@"
