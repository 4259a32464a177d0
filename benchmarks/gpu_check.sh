#!/usr/bin/env bash
# The GPU check of the Triton backend, in one run on a CUDA machine:
#   1. every Triton kernel on the GPU against its torch reference, forward and backward, and the
#      whole model on the triton backend (tests/rlvr/kernels/test_triton.py, all of it: the
#      interpreter's small cases and the `gpu`-marked ones), max errors printed;
#   2. their speed and accuracy at 8K tokens, bf16 (benchmarks/triton_kernels.py), against the
#      torch reference on the same GPU and mamba-ssm's kernels where that is installed;
#   3. packed attention through torch's flash varlen kernel against the dense mask
#      (tests/rlvr/kernels/test_attention.py);
#   4. the nano-slice model (Nano's widths) loaded in bf16 and one forward+backward at 8,192
#      packed tokens with the triton and torch backends: load peak, tokens/s, step peak
#      (benchmarks/nano_slice_step.py; `rlvr plan` reckons the same figures on any machine);
#   5. the weight transport between two processes on the GPU(s), a 6 GiB bucket set over CUDA IPC
#      and over NCCL: GB/s (benchmarks/gpu_weight_transfer.py).
# It uses the machine's own python3, torch and triton and installs nothing (a lent GPU machine
# here reaches no package index); the repository is put on PYTHONPATH. Logs and the benchmark's
# JSON go to $OUT (default /tmp/rlvr-gpu-check). Each part has its own time limit, so one that
# hangs still leaves the other's results.
#
#     bash benchmarks/gpu_check.sh
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/rlvr-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHON=${PYTHON:-python3}
unset TRITON_INTERPRET

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PYTHON" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/machine.txt"

status=0
timeout 330 "$PYTHON" -m pytest -q -s -p no:cacheprovider tests/rlvr/kernels/test_triton.py 2>&1 | tee "$OUT/tests.log" \
    || status=1
timeout 240 "$PYTHON" benchmarks/triton_kernels.py > "$OUT/triton_kernels.json" 2> "$OUT/triton_kernels.err" || status=1
cat "$OUT/triton_kernels.json"
tail -20 "$OUT/triton_kernels.err"
timeout 60 "$PYTHON" -m pytest -q -s -p no:cacheprovider tests/rlvr/kernels/test_attention.py 2>&1 | tee "$OUT/attention.log" \
    || status=1
timeout 180 "$PYTHON" benchmarks/nano_slice_step.py > "$OUT/nano_slice_step.json" 2> "$OUT/nano_slice_step.err" || status=1
cat "$OUT/nano_slice_step.json"
timeout 240 "$PYTHON" benchmarks/gpu_weight_transfer.py > "$OUT/gpu_weight_transfer.json" 2> "$OUT/gpu_weight_transfer.err" \
    || status=1
tail -1 "$OUT/gpu_weight_transfer.json"
exit $status
