"""Tiny Hugging Face models, a tokenizer and a JSONL made inside the test run (nothing is downloaded).

- a byte-level BPE tokenizer trained with ``tokenizers`` on local text (the JSONL's own text plus a stdlib
  module), with EOS/PAD tokens and a small chat template;
- random ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` models saved with ``save_pretrained`` (optionally in
  several safetensors shards with an index);
- a JSONL of prompt/response records whose responses follow from the prompts (the number after N).
"""

from __future__ import annotations

import json
import os
import random
import sysconfig

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def qa_records(n: int, seed: int = 0) -> list[dict]:
    """prompt 'next after <w>:' -> response ' <next word>' (a mapping a tiny model learns in few steps)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i = rng.randrange(10)
        out.append({"prompt": f"next after {WORDS[i]}:", "response": f" {WORDS[(i + 1) % 10]}"})
    return out


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    return str(path)


def make_tokenizer(out_dir, chat_template: bool = True, vocab_size: int = 300) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [json.dumps(r) for r in qa_records(200)] + [" ".join(WORDS)] * 20
    with open(os.path.join(sysconfig.get_paths()["stdlib"], "textwrap.py"), encoding="utf-8") as fh:
        text += fh.read().splitlines()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|end|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return str(out_dir)


def make_model(
    out_dir,
    family: str = "llama",
    vocab_size: int = 300,
    shard: str | None = None,
    seed: int = 0,
    tok_dir: str | None = None,
) -> str:
    """A random tiny causal LM saved with save_pretrained (+ the tokenizer files when tok_dir is given)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        eos_token_id=0,
        pad_token_id=1,
        bos_token_id=None,
    )
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(out_dir, **kwargs)
    if tok_dir:
        for f in os.listdir(tok_dir):
            shutil.copy(os.path.join(tok_dir, f), os.path.join(out_dir, f))
    return str(out_dir)
