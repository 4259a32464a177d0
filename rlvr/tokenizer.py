"""Tokenizers: a byte-level one the project owns (no download, used by the CPU demo and tests),
and an adapter for Hugging Face tokenizers of real checkpoints. Both expose the same four
things the rollout engines need: ``encode``, ``decode``, ``eos_token_id``, ``vocab_size``."""

from __future__ import annotations

from typing import Protocol


class Tokenizer(Protocol):
    eos_token_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0-255; then pad, bos, eos. Decoding skips the special ids and
    replaces broken UTF-8 (a sample cut mid-character) instead of failing."""

    pad_token_id, bos_token_id, eos_token_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return ([self.bos_token_id] if bos else []) + list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A ``transformers`` tokenizer behind the same interface."""

    def __init__(self, name_or_path: str):
        from transformers import AutoTokenizer

        self.inner = AutoTokenizer.from_pretrained(name_or_path)
        self.eos_token_id = self.inner.eos_token_id
        self.vocab_size = len(self.inner)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.inner.decode(ids, skip_special_tokens=True)


def make_tokenizer(name: str) -> Tokenizer:
    """"byte" -> ``ByteTokenizer``; anything else is a Hugging Face tokenizer name or path."""
    return ByteTokenizer() if name == "byte" else HFTokenizer(name)
