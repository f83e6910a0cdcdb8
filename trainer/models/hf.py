"""``model.name=hf model.path=DIR``: a pretrained causal LM from local files, through transformers.

``AutoModelForCausalLM.from_pretrained(DIR)`` reads ``config.json`` and the weights (one ``*.safetensors``
file or several with their ``model.safetensors.index.json``); nothing is downloaded. ``model.dtype`` says
what the weights are held in (``auto`` = the checkpoint's own dtype), apart from ``train.precision``
(autocast). In a job of several processes only rank 0 reads the files: the others build the model on the
meta device (buffers stay real), and the strategy broadcasts rank 0's weights after wrapping
(``set_model_state_dict(..., full_state_dict=True, broadcast_from_rank0=True)``), so 8 ranks do not each read
16 GB. ``config.use_cache`` is turned off for training: transformers then builds a block-diagonal causal mask
from restarting position ids, so packed documents do not attend to each other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data.base import DataInfo
from ..data.tokenizer import load_error, require_hf

log = logging.getLogger("trainer")

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def checkpoint_dtype(path: str) -> torch.dtype:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as fh:
        c = json.load(fh)
    name = c.get("dtype") or c.get("torch_dtype") or "float32"
    return getattr(torch, str(name), torch.float32)


def hf_dtype(cfg: Config) -> torch.dtype:
    """What ``model.dtype`` asks for: auto = the dtype in the checkpoint's config.json."""
    if cfg.model.dtype == "auto":
        return checkpoint_dtype(cfg.model.path)
    return _DTYPES[cfg.model.dtype]


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(path: str, key: str) -> None:
    """Weights are read from ``*.safetensors`` only: a directory holding nothing but pickled weights
    (``pytorch_model.bin``) is refused before anything is unpickled (a pickle can run code)."""
    names = os.listdir(path) if os.path.isdir(path) else []
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith(PICKLED))
    if pickled:
        raise ConfigError(
            f"{key}={path!r}: only pickled weights ({', '.join(pickled[:3])}), which are not loaded "
            "(unpickling can run code): convert them to safetensors where you trust them, e.g. "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
        )


def load_pretrained(
    path: str,
    dtype: torch.dtype,
    key: str = "model.path",
    meta: bool = False,
    trust_remote_code: bool = False,
) -> nn.Module:
    """The causal LM in ``path`` (local files only, safetensors only); on the meta device (buffers real)
    when ``meta``. ``trust_remote_code`` is passed explicitly (model.trust_remote_code): left unset,
    transformers would ask on a terminal whether to run a directory's own Python code."""
    transformers = require_hf(key)
    require_safetensors(path, key)
    trc = bool(trust_remote_code)
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trc)
        config.use_cache = False  # training: no KV cache, and packed documents get their own attention
        if meta:
            # ~1.5 s import, and only on ranks > 0 of a multi-process job: params on meta, buffers real
            from accelerate import init_empty_weights

            with init_empty_weights(include_buffers=False):
                return transformers.AutoModelForCausalLM.from_config(
                    config, dtype=dtype, trust_remote_code=trc
                )
        return transformers.AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=trc,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{key}={path!r}: cannot load the model ({load_error(e)})") from None


def build_hf(cfg: Config, info: DataInfo) -> nn.Module:
    m = cfg.model
    if info.task != "lm":
        raise ConfigError(
            f"model.name='hf': needs language-model data (data.name=jsonl), got task {info.task!r}"
        )
    rank, world = _rank_world()
    dtype = hf_dtype(cfg)
    with contextlib.redirect_stdout(None):  # transformers' load report goes to stdout on some versions
        model = load_pretrained(
            m.path, dtype, meta=world > 1 and rank != 0, trust_remote_code=m.trust_remote_code
        )
    model.broadcast_from_rank0 = world > 1  # the strategy fills ranks > 0 after wrapping
    vocab = model.get_input_embeddings().num_embeddings
    if info.vocab_size and info.vocab_size > vocab:
        raise ConfigError(
            f"data.tokenizer: {info.vocab_size} tokens, more than the model's {vocab} embeddings "
            f"(model.path={m.path!r})"
        )
    max_pos = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    if max_pos and info.seq_len and info.seq_len > max_pos:
        raise ConfigError(f"data.seq_len={info.seq_len}: longer than the model's {max_pos} positions")
    log.info(
        "hf: %s from %s (%s, %s)%s",
        type(model).__name__,
        m.path,
        str(dtype).replace("torch.", ""),
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters",
        "; rank 0 reads, the others get its weights by broadcast" if world > 1 else "",
    )
    return model
