"""Tiny random-initialised Llama-style causal LMs built from configs (nothing downloaded), for the LLM tests."""

from __future__ import annotations

import torch

LM_VOCAB = 300


def tiny_llama(*, vocab: int = LM_VOCAB, hidden: int = 32, layers: int = 4, seed: int = 0) -> torch.nn.Module:
    """A `LlamaForCausalLM` with `layers` decoder blocks of width `hidden`, eager attention, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


class WordTokenizer:
    """Just enough tokenizer for fingerprints: `get_vocab()` and `all_special_tokens`."""

    def __init__(self, vocab: int = LM_VOCAB, salt: str = "") -> None:
        self.vocab = {f"w{i}{salt}": i for i in range(vocab)}
        self.all_special_tokens = ["w0", "w1", "w2"]

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def token_sequences(n: int = 5, *, vocab: int = LM_VOCAB, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 12, (n,), generator=g)
    return [torch.randint(0, vocab, (int(length),), generator=g).tolist() for length in lengths]


class SpaceTokenizer(WordTokenizer):
    """Whitespace tokenizer over `LM_VOCAB` ids (no chat template): id = 3 + crc32(word) mod (vocab - 3)."""

    chat_template = None
    eos_token_id, pad_token_id = 2, 0

    def __call__(self, text: str, **_: object) -> dict[str, list[int]]:
        import zlib

        return {"input_ids": [1] + [3 + zlib.crc32(w.encode()) % (len(self.vocab) - 3) for w in text.split()]}
