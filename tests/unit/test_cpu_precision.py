"""One warning, with the measured cost, for a CPU precision that is emulated (docs/performance.md "Mixed
precision on CPU"); the CPU's flags come from /proc/cpuinfo (trainer/runtime/cpu.py)."""

from __future__ import annotations

import os

import pytest

from trainer.runtime import cpu

# The flags lines of the two machines the docs quote, as /proc/cpuinfo prints them (abridged).
AVX2_EPYC = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu vme sse sse2 ssse3 sse4_1 avx f16c avx2 fma bmi2\n"
AMX_XEON = (
    "model name\t: Intel(R) Xeon(R) Processor\n"
    "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8\n"
)
ARM = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16\n"


def test_flags_are_read_from_x86_and_arm_cpuinfo():
    assert {"avx2", "fma"} <= cpu.flags(AVX2_EPYC) and "avx512_bf16" not in cpu.flags(AVX2_EPYC)
    assert {"avx512_bf16", "amx_bf16"} <= cpu.flags(AMX_XEON)
    assert "bf16" in cpu.flags(ARM)
    assert cpu.flags("processor\t: 0\n") == set()


def test_bf16_warns_only_without_native_support_and_says_what_it_costs():
    warning = cpu.precision_warning("bf16", cpu.flags(AVX2_EPYC))
    assert warning.startswith("train.precision=bf16 on this CPU (no AVX512-BF16 or AMX-BF16) is emulated")
    assert "~6x the CPU time per step of fp32" in warning and "docs/performance.md" in warning
    assert cpu.precision_warning("bf16", cpu.flags(AMX_XEON)) is None
    assert cpu.precision_warning("bf16", cpu.flags(ARM)) is None


def test_fp16_warns_on_every_cpu_and_fp32_never():
    for info in (AVX2_EPYC, AMX_XEON, ARM):
        assert "train.precision=fp16 on a CPU is emulated" in cpu.precision_warning("fp16", cpu.flags(info))
        assert cpu.precision_warning("fp32", cpu.flags(info)) is None


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_this_machine_is_judged_by_its_own_flags():
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        own = cpu.flags(fh.read())
    assert cpu.native("bf16") == bool({"avx512_bf16", "amx_bf16", "bf16"} & own)
