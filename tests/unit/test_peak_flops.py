"""MFU's denominator: the device's dense peak for the precision a run uses, from its CUDA device name."""

import pytest

from trainer.training.observe.metrics import peak_flops


@pytest.mark.parametrize(
    "name, bf16, tf32, fp32",
    [
        ("NVIDIA H100 80GB HBM3", 989e12, 494.7e12, 66.9e12),  # SXM
        ("NVIDIA H100 PCIe", 756e12, 378e12, 51.2e12),
        ("NVIDIA H100 NVL", 835e12, 418e12, 60e12),
        ("NVIDIA H200", 989e12, 494.7e12, 66.9e12),
        ("NVIDIA A100-SXM4-80GB", 312e12, 156e12, 19.5e12),
        ("NVIDIA L40S", 362e12, 183e12, 91.6e12),
        ("NVIDIA L4", 121e12, 60e12, 30.3e12),  # not L40S's figures
        ("NVIDIA A10", 125e12, 62.5e12, 31.2e12),
    ],
)
def test_peak_per_precision(name, bf16, tf32, fp32):
    assert peak_flops(name, "bf16") == bf16 and peak_flops(name, "fp16") == bf16
    assert peak_flops(name, "fp32") == tf32  # the trainer runs fp32 matmuls on TF32 units on CUDA
    assert peak_flops(name, "fp32", tf32=False) == fp32


def test_unknown_device_or_missing_unit_has_no_peak():
    assert peak_flops("NVIDIA A10G", "bf16") is None  # not the A10's figures
    assert peak_flops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 units
    assert peak_flops("Tesla V100-SXM2-16GB", "fp32") == 15.7e12  # no TF32: the fp32 units
