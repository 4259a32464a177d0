import os

import torch

# Without a GPU, the Triton kernels run on this CPU under Triton's interpreter, which is chosen
# when triton is first imported (its own library functions are defined then): set before any test
# runs, since torch itself may import triton on the way (non-reentrant checkpointing does). Only
# this folder's tests see it; the vLLM tests, run elsewhere, keep triton as vLLM expects it. On a
# CUDA machine the kernels compile for the GPU (the tests marked ``gpu``).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
