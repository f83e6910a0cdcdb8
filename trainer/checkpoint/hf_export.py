"""Outputs of a ``model.name=hf`` run that other tools load: ``run.dir/hf/`` and ``run.dir/adapter/``.

- ``hf/``: the fine-tuned model with LoRA merged, plus its tokenizer, written by transformers'
  ``save_pretrained`` so ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load it;
- ``adapter/``: the peft adapter alone (LoRA runs), loadable by ``PeftModel.from_pretrained(base, DIR)``.

Both are written from the full (gathered) state dict on rank 0, into ``DIR.tmp`` then renamed (files fsync'd
first, ``runtime.atomic.replace_dir``), so a reader never sees half a directory. Under FSDP the caller
gathers the full state first (a collective).
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

from ..config import Config
from ..data.tokenizer import load_tokenizer, require_hf
from ..models.hf import hf_dtype
from ..runtime import atomic

log = logging.getLogger("trainer")


def _fresh(path: str) -> str:
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def write_hf_dir(merged: dict, cfg: Config, out: str) -> None:
    """``out/``: config.json + model.safetensors (+ generation config) and the tokenizer."""
    transformers = require_hf("model.path")
    trc = cfg.model.trust_remote_code  # explicit: unset, transformers asks on a terminal
    config = transformers.AutoConfig.from_pretrained(
        cfg.model.path, local_files_only=True, trust_remote_code=trc
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=hf_dtype(cfg), trust_remote_code=trc
        )
    own = model.state_dict()
    state = {k: v.detach().cpu() for k, v in merged.items() if k in own}
    missing = [k for k in own if k not in state]
    if missing and not all(_is_tied(model, k) for k in missing):
        raise RuntimeError(f"hf export: the trained state lacks {missing[:4]}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    tmp = _fresh(out)
    model.save_pretrained(tmp)
    tok = load_tokenizer(cfg.data.tokenizer or cfg.model.path, trust_remote_code=trc)
    tok.save_pretrained(tmp)
    atomic.replace_dir(tmp, out)
    log.info("hf: fine-tuned model (LoRA merged) and tokenizer in %s (from_pretrained loads it)", out)


def _is_tied(model: nn.Module, key: str) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(tied, dict):
        tied = list(tied)
    return key in tied


def write_adapter(module: nn.Module, full: dict, cfg: Config, out: str) -> None:
    """``out/``: adapter_config.json + adapter_model.safetensors from peft, pointing at ``model.path``."""
    tmp = _fresh(out)
    for pc in module.peft_config.values():
        pc.base_model_name_or_path = os.path.abspath(cfg.model.path) if cfg.model.path else None
    module.save_pretrained(tmp, state_dict={k: v.detach().cpu() for k, v in full.items()})
    atomic.replace_dir(tmp, out)
    log.info("adapter: the peft adapter in %s (PeftModel.from_pretrained(base, %s))", out, out)
