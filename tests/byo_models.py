"""Code nobody here wrote, as users bring it (issue #11): a nanoGPT-style GPT, a dict dataset, a loss.

The GPT follows karpathy/nanoGPT's interface: ``GPT(GPTConfig(...))``, ``forward(idx, targets=None)``
returning ``(logits, loss)``, and only the last position's logits when no targets are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 256
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(c.n_embd), nn.LayerNorm(c.n_embd)
        self.attn = nn.MultiheadAttention(c.n_embd, c.n_head, batch_first=True)
        self.mlp = nn.Sequential(
            nn.Linear(c.n_embd, 4 * c.n_embd), nn.GELU(), nn.Linear(4 * c.n_embd, c.n_embd)
        )

    def forward(self, x):
        T = x.shape[1]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx, targets=None):
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # inference-time optimisation: only the last position
            loss = None
        return logits, loss


class DictSequences(torch.utils.data.Dataset):
    """Sequence classification samples as Hugging Face datasets return them: dicts of tensors. The class is
    whether token 1 occurs in the unpadded part; ``attention_mask`` marks it."""

    def __init__(self, n: int = 96, seq_len: int = 12, vocab: int = 40, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, vocab, (n, seq_len), generator=g)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
        self.mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        has = torch.rand(n, generator=g) < 0.5
        self.ids[has, 0] = 1
        self.ids = self.ids * self.mask  # 0 is padding
        self.labels = has.long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def smoothed_ce(outputs, targets):
    """A user loss: label-smoothed cross-entropy on whatever logits the model returned."""
    logits = outputs.logits if hasattr(outputs, "logits") else outputs
    return F.cross_entropy(logits.float(), targets, label_smoothing=0.1)


def four_outputs():
    """4 outputs: does not fit the 10-class digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 4))


def scalar_per_sample_loss(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")  # not a scalar: a probe error


def tiny_llama_config(**kw):
    from transformers import LlamaConfig

    base = dict(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaConfig(**{**base, **kw})


LOSS_CALLS = []


def counted_ce(outputs, targets):
    """A user loss that records each call (how a test sees that train.loss really trains and evaluates)."""
    LOSS_CALLS.append(tuple(targets.shape))
    return F.cross_entropy(outputs, targets)


class RankTrap(nn.Module):
    """Fits the 10-class digits on rank 0 only: rank 1 returns 4 outputs (every rank must agree on exit 2)."""

    def __init__(self):
        super().__init__()
        import os

        self.fc = nn.Linear(784, 4 if os.environ.get("RANK", "0") == "1" else 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
