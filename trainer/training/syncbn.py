"""SyncBatchNorm that also runs on CPU (gloo): N processes compute the batch statistics one process would.

torch's ``nn.SyncBatchNorm`` raises on CPU input ("expected input tensor to be on GPU", torch 2.13
``batchnorm.py``), and DDP refuses it on CPU modules ("SyncBatchNorm layers only work with GPU modules").
On CUDA :func:`convert` uses torch's own; elsewhere :class:`CPUSyncBatchNorm`, a BatchNorm (same
parameters, buffers and state-dict keys, so checkpoints do not change) that in training computes the global
mean and variance with two differentiable all-reduces (``torch.distributed.nn.functional.all_reduce``,
whose backward all-reduces the gradients: the gradient of the global-batch loss, as on one process). In
eval mode and on one process it is a plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn

_NATIVE = ("cuda", "xpu", "hpu")  # devices torch's SyncBatchNorm kernels handle


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            or not (tdist.is_available() and tdist.is_initialized())
            or tdist.get_world_size() == 1
        ):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce  # ~0.1 s import: CPU multi-process only

        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, c] + [1] * (input.dim() - 2)
        x = input.float()
        local = torch.cat([x.sum(dims), x.new_tensor([x.numel() // c])])
        total = all_reduce(local)
        n = total[c]
        mean = total[:c] / n
        centered = x - mean.view(shape)
        var = all_reduce((centered * centered).sum(dims)) / n  # two passes: exact like one process's
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (n / (n - 1)).clamp(min=0) if float(n) > 1 else var.detach()
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        out = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def count_batchnorm(module: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def convert(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised across processes, holding the same tensors:
    torch's SyncBatchNorm on CUDA, :class:`CPUSyncBatchNorm` elsewhere."""
    if device.type in _NATIVE:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    """torch's ``convert_sync_batchnorm``, with :class:`CPUSyncBatchNorm`."""
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
