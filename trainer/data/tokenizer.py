"""A local Hugging Face tokenizer: loaded from a directory (never downloaded) and fingerprinted by its files.

``transformers`` is an optional extra (``pip install .[hf]``): it is imported here, when a tokenizer is
asked for, and a missing install is one line naming the extra.
"""

from __future__ import annotations

import hashlib
import os

from ..config import ConfigError

# Files a tokenizer directory may hold that change how text becomes ids.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
)


def require_hf(key: str, what: str = "transformers"):
    """Import an optional Hugging Face package, or a one-line config error naming the extra."""
    try:
        if what == "transformers":
            import transformers  # ~1.5 s import: only for model.name=hf / data.name=jsonl / generate

            transformers.utils.logging.disable_progress_bar()  # no bars per shard in our logs
            transformers.utils.logging.set_verbosity_error()
            return transformers
        if what == "peft":
            import peft  # ~4 s import (it imports torchao): only with lora.targets set

            return peft
    except ImportError:
        raise ConfigError(
            f"{key}: needs the optional Hugging Face packages: pip install '.[hf]' (transformers, "
            "tokenizers, peft)"
        ) from None
    raise ValueError(what)


def load_error(e: BaseException) -> str:
    """One line for a transformers load error; custom code refused says which key allows it, and its risk."""
    if "trust_remote_code" in str(e) or "custom code" in str(e):
        return (
            "it names custom Python code (auto_map), which is not run; set model.trust_remote_code=true "
            "only if you trust that code"
        )
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def load_tokenizer(path: str, key: str = "data.tokenizer", trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained(path)`` from local files only; EOS is required (packing needs it).
    ``trust_remote_code`` is passed explicitly (model.trust_remote_code): unset, transformers would ask on a
    terminal whether to run the directory's own tokenizer code."""
    transformers = require_hf(key)
    if not os.path.isdir(path):
        raise ConfigError(f"{key}={path!r}: not a directory")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=bool(trust_remote_code)
        )
    except Exception as e:  # OSError, ValueError: no tokenizer files, or unreadable ones
        raise ConfigError(f"{key}={path!r}: no usable tokenizer there ({load_error(e)})") from None
    if tok.eos_token_id is None:
        raise ConfigError(f"{key}={path!r}: the tokenizer has no EOS token (packing needs one)")
    return tok


def tokenizer_fingerprint(path: str) -> str:
    """sha256 over the tokenizer files in ``path`` (names and bytes), first 16 hex chars."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name in _TOKENIZER_FILES:
            h.update(name.encode())
            with open(os.path.join(path, name), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]
