"""How many processes ``--nproc-per-node auto`` means: one per visible GPU, 1 on a CPU-only machine.

Counted without importing torch or running nvidia-smi, so that ``--dry-run``, ``env`` and the preflight stay
fast and work where the NVIDIA tools are absent (slim images, CPU nodes).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping


def visible_gpus(
    env: Mapping[str, str] | None = None,
    driver_dir: str = "/proc/driver/nvidia/gpus",
    torch_fallback: bool = True,
) -> int:
    """GPUs this process may use, without importing torch or running nvidia-smi.

    The NVIDIA driver lists one directory per GPU under /proc/driver/nvidia/gpus (the container toolkit mounts
    only the GPUs given to the container); CUDA_VISIBLE_DEVICES narrows that, and CUDA stops reading it at the
    first invalid entry ("-1" hides every GPU). Without the driver directory but with devices named, torch
    decides (unusual setups such as WSL) unless ``torch_fallback`` is off.
    """
    env = os.environ if env is None else env
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    named = None
    if cvd is not None:
        named = 0
        for item in cvd.split(","):
            if not item.strip() or item.strip().startswith("-") or item.strip() == "NoDevFiles":
                break
            named += 1
    try:
        in_driver = len(os.listdir(driver_dir))
    except OSError:
        in_driver = None
    if in_driver is None:
        if not named or not torch_fallback:
            return 0
        import torch  # only reached with devices named but no driver listing

        return torch.cuda.device_count()
    return in_driver if named is None else min(in_driver, named)


class NoGPU(ValueError):
    """``gpu`` processes per node asked for on a machine without a visible GPU."""


def usable_cpus() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_nproc(
    value: int | str,
    env: Mapping[str, str] | None = None,
    gpus: Callable[[], int] | None = None,
    cpus: Callable[[], int] | None = None,
) -> int:
    """Processes per node for torchrun's words: an int stays; 'auto' = one per visible GPU, or 1 without GPUs
    (torchrun would start one per core); 'gpu' = one per visible GPU, and none visible is an error; 'cpu' =
    one per usable core (Trainer v2 sets 'cpu' when asked to run on CPUs)."""
    if value not in ("auto", "gpu", "cpu"):
        return int(value)
    if value == "cpu":
        return max(1, (cpus or usable_cpus)())
    n = (gpus or (lambda: visible_gpus(env)))()
    if value == "gpu" and n < 1:
        raise NoGPU("no GPU is visible")
    return max(1, n)
