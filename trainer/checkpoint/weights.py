"""Weights in and out: read any saved model (ours or not) as a plain state dict; one atomic writer.

``read_weights(path)`` takes a run dir (its newest verified checkpoint, else ``model.safetensors``), a
``checkpoints/`` dir, one checkpoint dir (checksums verified first; FSDP shards consolidated through the
restricted DCP reader), a ``trainer compress`` output, a ``.safetensors`` file, or a state-dict file read with
``weights_only=True`` only (a pickle that would run code is refused). LoRA adapters are merged on read.
Every failure is a :class:`~trainer.config.ConfigError` naming the config key or flag and the path.

``write_safetensors(state, path)`` is the one writer of ``.safetensors`` files: a temporary file, then an
atomic rename, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..config import ConfigError
from ..errors import missing_path
from ..runtime import atomic
from . import read, stores, transaction
from .layout import CheckpointError

log = logging.getLogger("trainer")

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel and torch.compile wrappers


def write_safetensors(state: dict, path: str, metadata: Optional[dict] = None) -> None:
    """Write ``state`` (name -> tensor) to ``path`` atomically: ``path.tmp`` first, then a rename.

    Tensors are detached, moved to the CPU, made contiguous and cloned: tied weights share storage, which
    safetensors refuses. The bytes depend only on the tensors and the metadata (``sort_metadata``), so a
    checksum of the file identifies the weights.
    """
    with atomic.atomic_path(path) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous().clone() for k, v in state.items()},
            tmp,
            metadata={"format": "pt", **(metadata or {})},
        )
        sort_metadata(tmp)


def sort_metadata(path: str) -> None:
    """Rewrite a .safetensors header in place with its ``__metadata__`` keys sorted.

    safetensors keeps the metadata in a Rust HashMap, whose order is random per process (and per map), so two
    identical saves differ in those bytes. The sorted header has the same length (the same keys and values),
    padded with spaces as the format allows; the tensor data is not touched.
    """
    with open(path, "r+b") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or list(meta) == sorted(meta):
            return
        ordered = {**header, "__metadata__": dict(sorted(meta.items()))}  # keeps its place
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > n:  # never: the same content in another order; leave the file as it was written
            return
        fh.seek(8)
        fh.write(text + b" " * (n - len(text)))


def import_torchao():
    """torchao.quantization, with its CPU-build import noise (missing CUDA .so files) silenced.

    Imported only when asked (~1 s, and it prints a harmless "Failed to load" notice on CPU builds); loading
    a torchao-quantized model needs it too, since torchao registers its tensor types as safe globals.
    """
    quiet = ("torchao", "torch.utils._pytree")
    levels = {n: logging.getLogger(n).level for n in quiet}
    for n in quiet:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        import torchao.quantization as tq
    except ImportError as e:  # an optional extra: say how to get it, in one line
        raise ConfigError(
            f"torchao is not installed ({e}): pip install 'torchrunner[quantize]' (requirements.txt pins it)"
        ) from None
    finally:
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)
    return tq


@dataclass
class Weights:
    state: dict  # name -> tensor, plain (LoRA adapters already merged)
    config: Optional[dict]  # the config the weights were trained with, when the source records it
    source: str  # what was read, for the log
    extra: dict = field(default_factory=dict)  # e.g. the compress report entry of a compressed model


def _first_line(e: BaseException) -> str:
    """The one informative line of an exception; for torch's weights_only refusal, what it refused."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"WeightsUnpickler error: ([^\n]*?was not an allowed global[^.\n]*|[^\n.]*)", text)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = found.group(1).strip() if found else (lines[0] if lines else "")
    return f"{type(e).__name__}: {first}".rstrip(": ")


def _torch_load(path: str, key: str):
    """torch.load with weights_only=True; anything that is not plain tensors/containers is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as e:
        raise ConfigError(
            f"{key}={path!r}: refused: not a plain weights file (read with weights_only=True; "
            f"{_first_line(e)})"
        ) from None


def _strip_wrappers(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


def _as_state_dict(obj, path: str, key: str) -> dict:
    """A state dict from what a .pt file holds: the dict itself, or its "model"/"state_dict" entry."""
    if isinstance(obj, dict):
        for inner in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(inner), dict):
                obj = obj[inner]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{key}={path!r}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return obj


def _read_yaml(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def best_checkpoint(path: str, key: str = "--from") -> str:
    """The best checkpoint of a run by its manifests' monitor record (``--best``)."""
    if not os.path.exists(path):
        raise ConfigError(missing_path(key, path))
    if not os.path.isdir(path):
        raise ConfigError(f"{key}={path!r}: --best needs a run dir or checkpoints dir, not a file")
    try:
        return transaction.resolve_best(path)
    except CheckpointError as e:
        raise ConfigError(f"{key} --best: {e}") from None


def read_weights(path: str, key: str = "model.init_from") -> Weights:
    """Weights from a run dir, checkpoints dir, checkpoint dir, compress output, .safetensors or .pt file.

    A run dir prefers its newest verified checkpoint (full fidelity, checksummed) over model.safetensors.
    Every failure is a :class:`ConfigError` that names ``key`` and the path.
    """
    if stores.is_url(path):  # checkpoints on an object store (checkpoint.dir=s3://...)
        try:
            found = transaction.resolve(path)
        except CheckpointError as e:
            raise ConfigError(f"{key}={path!r}: {e}") from None
        except OSError as e:
            raise ConfigError(f"{key}={path!r}: {stores.describe(e)}") from None
        return _read_checkpoint(path, found, key)
    if not os.path.exists(path):
        raise ConfigError(missing_path(key, path))
    if os.path.isdir(path):
        compressed = _compressed_entry(path, None)
        if compressed is not None:
            return _read_compressed(path, compressed, key)
        problem = "no usable checkpoint"
        try:
            found = transaction.resolve(path)
        except CheckpointError as e:  # e names each unusable checkpoint and why (e.g. a refused pickle)
            found, problem = None, str(e).removeprefix(f"{path!r}: ")
        if found is None:
            final = os.path.join(path, "model.safetensors")
            if not os.path.isfile(final):
                raise ConfigError(f"{key}={path!r}: {problem} and no model.safetensors found")
            w = read_weights(final, key)
            w.config = w.config or _read_yaml(os.path.join(path, "config.yaml"))
            return w
        return _read_checkpoint(path, found, key)
    parent = os.path.dirname(os.path.abspath(path))
    compressed = _compressed_entry(parent, os.path.basename(path))
    if compressed is not None:
        return _read_compressed(parent, compressed, key)
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
                sd = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as e:
            raise ConfigError(f"{key}={path!r}: not a readable safetensors file ({_first_line(e)})") from None
        cfg = json.loads(meta["config"]) if "config" in meta else None
        return Weights(merge_lora_state(_strip_wrappers(sd), cfg), cfg, f"safetensors {path}")
    sd = _as_state_dict(_torch_load(path, key), path, key)
    return Weights(merge_lora_state(_strip_wrappers(sd)), None, f"state dict {path}")


def _read_checkpoint(path: str, found: str, key: str) -> Weights:
    """The weights of one committed checkpoint (local or remote), verified before anything is unpickled."""
    try:
        state, _ = read.load_state(found, verify_first=True)
    except CheckpointError as e:
        raise ConfigError(f"{key}={path!r}: {e}") from None
    except Exception as e:  # an unpickling error: weights_only refused something
        raise ConfigError(
            f"{key}={path!r}: refused {found}: not a plain weights file "
            f"(read with weights_only=True; {_first_line(e)})"
        ) from None
    manifest = read.read_manifest(found)
    if read.is_sharded(found):  # FSDP: consolidate the DCP shards here (restricted unpickler)
        try:
            sd = read.consolidated_model_state(found)
        except Exception as e:
            raise ConfigError(
                f"{key}={path!r}: sharded checkpoint {found} unreadable ({_first_line(e)})"
            ) from None
    else:
        sd = _as_state_dict(state, found, key)
    return Weights(
        merge_lora_state(_strip_wrappers(sd), manifest.get("config")),
        manifest.get("config"),
        f"checkpoint {found} (step {manifest.get('step')})",
    )


def _compressed_entry(directory: str, filename: Optional[str]) -> Optional[dict]:
    """The variant entry of a `python -m trainer compress` output (report.json beside the file), if any."""
    report = os.path.join(directory, "report.json")
    if not os.path.isfile(report):
        return None
    try:
        with open(report, encoding="utf-8") as fh:
            rep = json.load(fh)
    except (OSError, ValueError):
        return None
    files = [r for r in rep.get("rows", []) if r.get("file")]
    if filename is not None:
        files = [r for r in files if r["file"] == filename]
    if len(files) != 1:
        return None if filename is not None or not files else {"ambiguous": [r["file"] for r in files]}
    return {**files[0], "config": rep.get("config")}


def _read_compressed(directory: str, entry: dict, key: str) -> Weights:
    if "ambiguous" in entry:
        raise ConfigError(
            f"{key}={directory!r}: holds several compressed models ({', '.join(entry['ambiguous'])}); "
            "name one file"
        )
    path = os.path.join(directory, entry["file"])
    if path.endswith(".safetensors"):
        sd = load_file(path)
    else:
        if entry.get("scheme", "").startswith("int8"):  # torchao registers its tensor types as safe globals
            import_torchao()
        with warnings.catch_warnings():  # torch.ao's packed int8 weights: deprecation notices on load
            warnings.simplefilter("ignore")
            sd = _torch_load(path, key)
        if not isinstance(sd, dict):
            raise ConfigError(f"{key}={path!r}: expected a state dict, got {type(sd).__name__}")
    return Weights(sd, entry.get("config"), f"compressed model {path} ({entry.get('variant')})", extra=entry)


# ----------------------------------------------------------------------------- LoRA adapters in a state dict


def lora_merge(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    return (w.float() + float(scale) * (b.float() @ a.float())).to(w.dtype)


def lora_scale(config: Optional[dict]) -> Optional[float]:
    """alpha / rank from a saved config's ``lora`` section (peft keeps the scale out of the state dict)."""
    lo = (config or {}).get("lora") or {}
    if not lo.get("targets"):
        return None
    return float(lo.get("alpha", 16.0)) / float(lo.get("rank", 8))


def is_peft_state(sd: dict) -> bool:
    return any(".lora_A.default." in k or ".base_layer." in k or ".modules_to_save." in k for k in sd)


def merge_lora_state(sd: dict, config: Optional[dict] = None) -> dict:
    """Plain weights from a state dict with LoRA adapters: W + (alpha/rank) B A, under the model's own names.

    Reads peft's layout (``base_model.model.`` prefix, ``X.base_layer.weight``, ``X.lora_A.default.weight``,
    ``X.modules_to_save.default.*``; the scale comes from ``config``, the run's saved config) and, converted
    on the fly, the layout of this project's former hand-written LoRA (``X.lora_A``, ``X.lora_B``,
    ``X.lora_scale``, the scale stored beside them).
    """
    if is_peft_state(sd):
        scale = lora_scale(config)
        if scale is None and any(".lora_A.default." in k for k in sd):
            raise ConfigError("LoRA weights without the run's config (lora.alpha / lora.rank): cannot merge")
        out: dict = {}
        pre = "base_model.model."
        plain = {(k[len(pre) :] if k.startswith(pre) else k): v for k, v in sd.items()}
        for k, v in plain.items():
            if ".lora_A.default." in k or ".lora_B.default." in k or ".original_module." in k:
                continue
            if ".modules_to_save.default." in k:
                out[k.replace(".modules_to_save.default.", ".")] = v
            elif ".base_layer." in k:
                mod, _, leaf = k.partition(".base_layer.")
                a = plain.get(f"{mod}.lora_A.default.weight")
                if leaf == "weight" and a is not None:
                    v = lora_merge(v, a, plain[f"{mod}.lora_B.default.weight"], scale)
                out.setdefault(f"{mod}.{leaf}", v)
            else:
                out.setdefault(k, v)
        return out
    if not any(k.endswith(".lora_A") for k in sd):
        return sd
    out = dict(sd)
    for k in [k for k in sd if k.endswith(".lora_A")]:
        p = k[: -len(".lora_A")]
        a, b, s = out.pop(k), out.pop(p + ".lora_B"), out.pop(p + ".lora_scale")
        out[p + ".weight"] = lora_merge(out[p + ".weight"], a, b, float(s))
    return out
