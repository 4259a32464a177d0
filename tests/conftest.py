import sys
from pathlib import Path

import pytest

# Tests import the in-repo packages even when run without an editable install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny hybrid checkpoint with a 64-token context, for the offline commands' tests."""
    import torch

    import rlvr.model as M
    from rlvr.model.config import tiny
    from rlvr.tokenizer import ByteTokenizer

    path = tmp_path_factory.mktemp("tiny_checkpoint")
    torch.manual_seed(0)
    tok = ByteTokenizer()
    M.HybridLM(tiny(max_position_embeddings=64, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save(path)
    return path
