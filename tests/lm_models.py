"""Tiny random-initialised Llama-style causal LMs built from configs (nothing downloaded) and token batches, for the
LM distillation tests."""

from __future__ import annotations

import torch

VOCAB = 40
EOS = 2


def tiny_llama(*, hidden: int = 32, layers: int = 2, vocab: int = VOCAB, seed: int = 0, tied: bool = False):
    """A `LlamaForCausalLM` with `layers` layers of width `hidden`, eager attention, no dropout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, eos_token_id=EOS, bos_token_id=1, pad_token_id=0)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def lm_batch(*, batch: int = 3, length: int = 8, prompt: int = 3, seed: int = 0, vocab: int = VOCAB) -> dict:
    """Right-padded token ids with ragged real lengths, `attention_mask`, and labels = ids with -100 on the first
    `prompt` tokens (a prompt) and on padding, as an SFT collator makes them."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(prompt + 2, length + 1, (batch,), generator=g)
    lengths[0] = length
    attention = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()
    ids = torch.randint(3, vocab, (batch, length), generator=g) * attention
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def pad_lm(batch: dict, length: int) -> dict:
    """The same batch right-padded to `length`: id 0, attention 0, labels garbage token ids (only the attention mask
    marks them)."""
    extra = length - batch["input_ids"].shape[1]
    pad = torch.nn.functional.pad
    return {"input_ids": pad(batch["input_ids"], (0, extra), value=0),
            "attention_mask": pad(batch["attention_mask"], (0, extra), value=0),
            "labels": pad(batch["labels"], (0, extra), value=5)}


class LMDataset(torch.utils.data.Dataset):
    """`n` rows of `length` tokens: a 3-token prompt (-100 labels) then a learnable continuation (each token is the
    previous + 1 mod vocab)."""

    def __init__(self, n: int = 12, length: int = 10, seed: int = 0, vocab: int = VOCAB) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            start = torch.randint(3, vocab, (1,), generator=g)
            ids = (start + torch.arange(length)) % (vocab - 3) + 3
            labels = ids.clone()
            labels[:3] = -100
            self.rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class RaggedLM(torch.utils.data.Dataset):
    """LMDataset rows cut to different lengths (5..10 tokens), unpadded (a collator pads them)."""

    def __init__(self, n: int = 8) -> None:
        base = LMDataset(n)
        g = torch.Generator().manual_seed(4)
        lengths = torch.randint(5, 11, (n,), generator=g).tolist()
        self.rows = [{k: v[:length] for k, v in base[i].items()} for i, length in enumerate(lengths)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]
