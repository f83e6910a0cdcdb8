"""Post-training int8 quantization of nn.Linear layers, and byte counts that tell the truth about it.

Schemes (``python -m trainer compress --method quantize --scheme ...``):

- ``int8-dynamic``: torchao ``Int8DynamicActivationInt8WeightConfig`` (int8 weights per output row,
  activations quantized per row at run time, int8 matmul);
- ``int8-weight``: torchao ``Int8WeightOnlyConfig`` (int8 weights dequantized in the matmul);
- ``torch-ao-dynamic``: ``torch.ao.quantization.quantize_dynamic`` with fbgemm/x86 kernels. torch.ao is
  deprecated in favour of torchao (https://github.com/pytorch/ao/issues/2259) but on CPU its kernel is the
  fastest of the three here (../shared/PLATFORM.md), so it stays as a scheme and as the fallback when torchao
  cannot be imported or fails on a model.

Only nn.Linear layers are quantized (convolutions stay fp32). torchao is imported lazily: the import costs
time and logs harmless "Failed to load ...so" warnings for GPU kernels on a CPU build.
"""

from __future__ import annotations

import copy
import logging
import warnings

import torch
from torch import nn

from ..checkpoint.weights import import_torchao
from .cli import QUANT_SCHEMES as SCHEMES

log = logging.getLogger("trainer")


def _torchao(module: nn.Module, scheme: str) -> nn.Module:
    tq = import_torchao()
    config = (
        tq.Int8DynamicActivationInt8WeightConfig() if scheme == "int8-dynamic" else tq.Int8WeightOnlyConfig()
    )
    tq.quantize_(module, config)
    return module


def _torch_ao(module: nn.Module) -> nn.Module:
    engines = torch.backends.quantized.supported_engines
    for engine in ("x86", "fbgemm", "qnnpack"):
        if engine in engines:
            torch.backends.quantized.engine = engine
            break
    else:
        raise RuntimeError(f"no int8 CPU engine in torch.backends.quantized ({engines})")
    with warnings.catch_warnings():  # deprecation notices (see the module docstring)
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)


def quantize(module: nn.Module, scheme: str, fallback: bool = True) -> tuple[nn.Module, str, str]:
    """(quantized copy, scheme actually used, note). ``module`` is left as it was."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}")
    q = copy.deepcopy(module).eval()
    if scheme == "torch-ao-dynamic":
        return _torch_ao(q), scheme, "torch.ao dynamic int8"
    try:
        return _torchao(q, scheme), scheme, f"torchao {scheme}"
    except Exception as e:  # ImportError, or an op torchao cannot handle on this build
        if not fallback:
            raise
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning("torchao %s failed (%s); falling back to torch.ao dynamic int8", scheme, reason)
        return (
            _torch_ao(copy.deepcopy(module).eval()),
            "torch-ao-dynamic",
            f"fallback from {scheme}: {reason}",
        )


def rebuild(module: nn.Module, scheme: str) -> nn.Module:
    """The module structure a saved quantized state dict loads into (``load_state_dict(assign=True)``)."""
    q, used, _ = quantize(module, scheme, fallback=False)
    return q


# ----------------------------------------------------------------------------- measuring


def tensor_bytes(t) -> int:
    """Bytes of a tensor's data: inner tensors of a torchao subclass, int8 data + scales of a torch.ao one."""
    if isinstance(t, (tuple, list)):
        return sum(tensor_bytes(x) for x in t if isinstance(x, (torch.Tensor, tuple, list)))
    if not isinstance(t, torch.Tensor):
        return 0
    if type(t) is not torch.Tensor and type(t) is not nn.Parameter and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    if t.is_quantized:
        extra = (
            t.q_per_channel_scales().numel() * 12
            if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
            else 12
        )  # fp64 scale + int32 zero point
        return t.numel() * t.element_size() + extra
    return t.numel() * t.element_size()


def linear_weight_bytes(module: nn.Module) -> int:
    """Bytes held by the weights of every Linear layer (float, torchao-quantized or torch.ao-quantized)."""
    total = 0
    for m in module.modules():
        if isinstance(m, nn.Linear):
            total += tensor_bytes(m.weight)
        elif type(m).__module__.startswith("torch.ao.nn.quantized") and callable(getattr(m, "weight", None)):
            total += tensor_bytes(m.weight())
    return total


def _values(t) -> list[torch.Tensor]:
    """The stored numbers of a (possibly quantized) tensor, for counting zeros."""
    if isinstance(t, (tuple, list)):
        return [v for x in t for v in _values(x)]
    if not isinstance(t, torch.Tensor):
        return []
    if type(t) is not torch.Tensor and hasattr(t, "qdata"):
        return [t.qdata]
    if t.is_quantized:
        return [t.int_repr()]
    return [t] if t.is_floating_point() else []


def zeros_and_total(module: nn.Module) -> tuple[int, int]:
    """(zero entries, all entries) over the weights and biases of the module's state dict."""
    zeros = total = 0
    for k, v in module.state_dict().items():
        if k.rsplit(".", 1)[-1] in ("scale", "zero_point"):
            continue
        for t in _values(v):
            zeros += int((t == 0).sum())
            total += t.numel()
    return zeros, total
