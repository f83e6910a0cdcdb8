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


# ----------------------------------------------------------------------------- issue #23: inputs and outputs


class BNNet(nn.Module):
    """An MLP with BatchNorm: statistics per batch, so N processes train one model only when synced."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(features, 16), nn.BatchNorm1d(16), nn.Linear(16, classes)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class UnusedHead(nn.Module):
    """A second head that forward never uses: DDP without find_unused_parameters cannot reduce it."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.fc, self.spare = nn.Linear(features, classes), nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x)


class TwoInputs(nn.Module):
    """forward(a, b): samples (a, b, y)."""

    def __init__(self):
        super().__init__()
        self.fa, self.fb = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, a, b):
        return self.fa(a) + self.fb(b)


class Triples(torch.utils.data.Dataset):
    """(a, b, y): the class is which of three fixed directions a - b points to most."""

    def __init__(self, n: int = 256, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.a, self.b = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
        self.y = (self.a - self.b)[:, :3].argmax(1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.a[i], self.b[i], self.y[i]


class CfgNode:
    """minGPT's config: a bag of attributes that takes only **kwargs."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class MinMLP(nn.Module):
    """A minGPT-style model built from a CfgNode."""

    def __init__(self, config):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(config.n_in, config.n_hidden), nn.ReLU(), nn.Linear(config.n_hidden, config.n_out)
        )

    def forward(self, x):
        return self.net(x)


class TotalLoss(nn.Module):
    """Returns {"logits", "total_loss"} (its loss under its own key): cross-entropy + ``offset``; with
    ``aux=True`` also a 0-dim "aux" tensor, so the loss cannot be told without model.loss_key."""

    def __init__(self, features: int = 8, classes: int = 4, offset: float = 10.0, aux: bool = False):
        super().__init__()
        self.fc, self.offset, self.aux = nn.Linear(features, classes), offset, aux

    def forward(self, x, targets=None):
        logits = self.fc(x)
        out = {"logits": logits}
        if targets is not None:
            out["total_loss"] = F.cross_entropy(logits, targets) + self.offset
            if self.aux:
                out["aux"] = logits.pow(2).mean()
        return out


class MetricOnly(nn.Module):
    """Returns {"scores", "confidence"}: predictions and a detached 0-dim metric, no loss. The metric is the
    only 0-dim tensor, so it is read as the model's loss, which has no gradient to train on."""

    def __init__(self, features: int = 8, classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        scores = self.fc(x)
        return {"scores": scores, "confidence": scores.softmax(-1).amax(-1).mean().detach()}


def scores_ce(outputs, targets):
    """A user loss for MetricOnly: cross-entropy on its "scores"."""
    return F.cross_entropy(outputs["scores"], targets)


class CausalDicts(torch.utils.data.Dataset):
    """The Hugging Face causal-LM recipe: {"input_ids", "attention_mask", "labels"} with labels equal to
    input_ids (unshifted). Token t+1 = (token t * 7 + 3) % vocab: a rule a model learns only if trained on
    the next token."""

    def __init__(self, n: int = 128, seq_len: int = 16, vocab: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, vocab, (n,), generator=g)
        ids = [start]
        for _ in range(seq_len - 1):
            ids.append((ids[-1] * 7 + 3) % vocab)
        self.ids = torch.stack(ids, 1)
        self.vocab = vocab

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class Seq2SeqDicts(torch.utils.data.Dataset):
    """T5-style samples: 12 input tokens, labels = the first 5 reversed (another length than the inputs)."""

    def __init__(self, n: int = 64, vocab: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(2, vocab, (n, 12), generator=g)
        self.labels = self.ids[:, :5].flip(1)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[i]}


def huge_ce(outputs, targets):
    """Cross-entropy times 1e8: under fp16 its scaled gradients overflow until the GradScaler has lowered
    its scale far enough (how a test sees who owns overflow)."""
    return F.cross_entropy(outputs.float(), targets) * 1e8
