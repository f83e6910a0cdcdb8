"""``python -m trainer generate``: complete prompts with a fine-tuned language model.

    python -m trainer generate --from runs/llm --prompt "next after two:"            # the run's hf/
    python -m trainer generate --from runs/llm/checkpoints/step-00000100 --prompt-file prompts.txt
    python -m trainer generate --from runs/llm/hf --prompt "..." --temperature 0.8 --top-k 40

``--from`` is a ``model.name=hf`` run (its ``hf/`` export), one of its checkpoints (the base model is rebuilt
from the saved ``model.path``, LoRA merged on read), or any Hugging Face model directory. Temperature 0 is
greedy decoding (deterministic); above 0, sampling seeded by ``--seed``, optionally among the ``--top-k``
most likely tokens. Each prompt is completed on its own; the completion (new tokens only) is printed, one
block per prompt. A source that is not a causal LM is one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from .. import config
from ..checkpoint.weights import read_weights
from ..data.tokenizer import load_tokenizer
from ..models.hf import checkpoint_dtype, hf_dtype, load_pretrained
from .evaluate import resolve_config

log = logging.getLogger("trainer")


def _hf_dir(src: str):
    for d in (src, os.path.join(src, "hf")):
        if os.path.isfile(os.path.join(d, "config.json")) and not os.path.isdir(
            os.path.join(d, "checkpoints")
        ):
            return d
    return None


def load_lm(src: str):
    """(model in eval mode, tokenizer, description) for ``--from SRC``."""
    d = _hf_dir(src)
    if d is not None:
        model = load_pretrained(d, checkpoint_dtype(d), key="--from")
        return model.eval(), load_tokenizer(d, "--from"), f"hf model {d}"
    w = read_weights(src, key="--from")
    cfg = resolve_config(w.config, None, [], src)
    if cfg.model.name != "hf":
        raise config.ConfigError(
            f"--from {src!r}: a model.name={cfg.model.name!r} run; generate needs a model.name=hf run, "
            "one of its checkpoints or a Hugging Face model directory"
        )
    model = load_pretrained(
        cfg.model.path, hf_dtype(cfg), key="model.path", trust_remote_code=cfg.model.trust_remote_code
    )
    try:
        model.load_state_dict(w.state, strict=True)
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise config.ConfigError(f"--from {src!r}: does not fit {cfg.model.path!r} ({first})") from None
    tok = load_tokenizer(
        cfg.data.tokenizer or cfg.model.path, "data.tokenizer", trust_remote_code=cfg.model.trust_remote_code
    )
    return model.eval(), tok, w.source


@torch.inference_mode()
def complete(model, tok, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int) -> str:
    """The completion of one prompt: greedy at temperature 0, else seeded sampling."""
    ids = tok(prompt, return_tensors="pt")
    sample = temperature > 0
    kwargs = {"do_sample": sample}
    if sample:
        torch.manual_seed(seed)
        kwargs.update(temperature=temperature, top_k=top_k or None)
    else:
        kwargs.update(temperature=None, top_k=None, top_p=None)
    out = model.generate(
        **ids,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        **kwargs,
    )
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)


def generate_main(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise config.ConfigError(f"--max-new-tokens={args.max_new_tokens}: must be >= 1")
    if args.temperature < 0:
        raise config.ConfigError(f"--temperature={args.temperature}: must be >= 0")
    if args.prompt_file:
        if not os.path.isfile(args.prompt_file):
            raise config.ConfigError(f"--prompt-file={args.prompt_file!r}: no such file")
        with open(args.prompt_file, encoding="utf-8") as fh:
            prompts = [ln.rstrip("\n") for ln in fh if ln.strip()]
    else:
        prompts = args.prompt
    model, tok, source = load_lm(args.src)
    log.info("generate: %s, %d prompt(s)", source, len(prompts))
    for i, p in enumerate(prompts):
        text = complete(model, tok, p, args.max_new_tokens, args.temperature, args.top_k, args.seed + i)
        print(text, flush=True)
    return 0
