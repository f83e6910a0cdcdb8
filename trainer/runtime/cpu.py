"""Whether this CPU computes train.precision natively, read from the kernel's CPU flags (no torch needed).

bf16: native on x86 with AVX512-BF16 or AMX-BF16 (Arm: the `bf16` feature); without them oneDNN converts
to fp32 and back around every op, which costs more than it saves (docs/performance.md "Mixed precision on
CPU"). fp16: torch 2.13's CPU autocast has no fast fp16 path even where the CPU has AVX512-FP16, so it is
treated as emulated everywhere.
"""

from __future__ import annotations

import functools
from typing import Optional

NATIVE = {"bf16": ("avx512_bf16", "amx_bf16", "bf16"), "fp16": ()}
# CPU time per step relative to fp32, the digits CNN (configs/cnn.yaml), one thread (docs/performance.md
# "Mixed precision on CPU"): bf16 on the CI machine, an AMD EPYC with AVX2 only (2026-12-07); fp16 there
# ~7x, and over 50x on an Intel Xeon with AVX512-FP16 and AMX.
COST = {"bf16": "~6x", "fp16": "~7x or more"}


def flags(cpuinfo: str) -> set[str]:
    """The CPU's feature flags from the text of /proc/cpuinfo (x86 `flags`, Arm `Features`)."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.lru_cache(maxsize=1)
def _own_flags() -> Optional[set[str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            found = flags(fh.read())
    except OSError:  # not Linux: unknown, and unknown never warns
        return None
    return found or None


def native(precision: str, cpu_flags: Optional[set[str]] = None) -> Optional[bool]:
    """True/False: this CPU does (not) compute `precision` natively; None: unknown (no /proc/cpuinfo)."""
    if precision not in NATIVE:
        return True
    if not NATIVE[precision]:
        return False  # no CPU has a fast path for it in torch
    cpu_flags = _own_flags() if cpu_flags is None else cpu_flags
    if cpu_flags is None:
        return None
    return any(f in cpu_flags for f in NATIVE[precision])


def precision_warning(precision: str, cpu_flags: Optional[set[str]] = None) -> Optional[str]:
    """The one warning for train.precision on a CPU that lacks it natively; None when there is nothing to
    say."""
    if native(precision, cpu_flags) is not False:
        return None
    need = " or ".join(f.upper().replace("_", "-") for f in NATIVE[precision][:2])
    why = f"this CPU (no {need})" if need else "a CPU"
    return (
        f"train.precision={precision} on {why} is emulated: measured {COST[precision]} the "
        "CPU time per step of fp32 (digits CNN); train.precision=fp32 is faster here "
        '(docs/performance.md "Mixed precision on CPU")'
    )
