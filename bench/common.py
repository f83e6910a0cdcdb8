"""What every bench script shares: arguments, environment record, statistics, tables, JSON, trainer hooks.

Timing conventions (all scripts): a step's time is the interval between the starts of two consecutive
steps, so it covers the data fetch, the step and the loop's own bookkeeping exactly once; the first
``warmup`` intervals of every run are dropped; runs of the variants being compared alternate (the order
rotates each round) so slow drifts from other jobs on the machine hit every variant alike; a figure is the
median over steps within a run, then the median over rounds, with the spread over rounds beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Optional

from trainer.runtime import atomic  # no torch: the trainer's one atomic write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


# ----------------------------------------------------------------------------- arguments and output


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, a few seconds: checks the script runs (CI)")
    p.add_argument("--quick", action="store_true",
                   help="full sizes, fewer repeats (a few minutes on a busy machine; the spread is wider)")
    p.add_argument("--out", default=None,
                   help="directory for the JSON (default: $OUT if set, else bench/results)")
    return p


def add_only(p: argparse.ArgumentParser, choices: list[str], what: str) -> None:
    p.add_argument("--only", default=",".join(choices), help=f"comma-separated subset of {','.join(choices)}")
    p.set_defaults(_only_choices=choices, _only_what=what)


def only(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The --only selection, refusing unknown names in one line (argparse's exit 2)."""
    chosen = [s for s in args.only.split(",") if s]
    unknown = set(chosen) - set(args._only_choices)
    if unknown:
        p.error(f"--only: unknown {args._only_what} {', '.join(sorted(unknown))}")
    return chosen


def result_dir(args: argparse.Namespace) -> str:
    d = args.out or os.environ.get("OUT") or RESULTS
    os.makedirs(d, exist_ok=True)
    return d


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_head() -> Optional[str]:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def _dist_version(name: str) -> Optional[str]:
    """Installed version without importing the package (importing accelerate alone costs ~1.5 s)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def file_digest(*rel_paths: str) -> dict:
    """sha256 (12 hex) of source files a figure depends on, so a result names the code it measured."""
    out = {}
    for rel in rel_paths:
        try:
            with open(os.path.join(ROOT, rel), "rb") as fh:
                out[rel] = hashlib.sha256(fh.read()).hexdigest()[:12]
        except OSError:
            out[rel] = None
    return out


def env_info() -> dict:
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": _dist_version("numpy"),
        "accelerate": _dist_version("accelerate"),
        "lightning_fabric": _dist_version("lightning-fabric"),
        "git": _git_head(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def result_path(name: str, args: argparse.Namespace) -> str:
    stamp = datetime.date.today().strftime("%Y%m%d")
    return os.path.join(result_dir(args), f"{name}{'-smoke' if args.smoke else ''}-{stamp}.json")


def _write_json(path: str, doc: dict) -> None:
    # a reader (or a timeout) sees the previous version or this one, never half
    with atomic.atomic_open(path, "w") as fh:
        json.dump(_jsonable(doc), fh, indent=1)
        fh.write("\n")


class Report:
    """The JSON of one bench run, rewritten after every row (or round), so a run cut short by a timeout still
    leaves what it finished; ``status`` says "running" until ``close()``.

    It records the machine's state: the 1-minute load average and the CPU idle time of the whole machine
    (/proc/stat) at the start and at every write, so each table can say whether a core was free while it
    ran (``machine_line``).
    """

    def __init__(self, name: str, args: argparse.Namespace, settings: dict, threads: int = 1, **extra: Any):
        self.name, self.threads = name, threads
        self.path = result_path(name, args)
        self.start = machine_sample()
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        command = " ".join(["python -m bench." + name, *sys.argv[1:]])
        self.doc: dict = {"bench": name, "smoke": bool(args.smoke), "quick": bool(getattr(args, "quick", 0)),
                          "command": command, "status": "running", "env": env_info(), "settings": settings,
                          "machine": {}, "rows": [], **extra}
        self.save()

    @property
    def rows(self) -> list[dict]:
        return self.doc["rows"]

    def add(self, row: dict) -> None:
        self.doc["rows"].append(row)
        self.save()

    def set_rows(self, rows: list[dict]) -> None:
        self.doc["rows"] = rows
        self.save()

    def put(self, key: str, value: Any) -> None:
        self.doc[key] = value
        self.save()

    def machine(self) -> dict:
        return machine_state(self.start, machine_sample(), self.threads)

    def save(self) -> str:
        self.doc["machine"] = self.machine()
        self.doc["wall_s"] = time.perf_counter() - self.t0
        self.doc["process_cpu_s"] = time.process_time() - self.cpu0  # every thread of this process
        _write_json(self.path, self.doc)
        return self.path

    def close(self) -> str:
        self.doc["status"] = "done"
        return self.save()

    def machine_line(self) -> str:
        return describe_machine(self.machine())


# ----------------------------------------------------------------------------- the machine's state


def machine_sample() -> dict:
    """Now: the 1-minute load average and the machine's cumulative CPU jiffies (all, idle + iowait)."""
    out = {"time": time.time(), "loadavg_1m": loadavg(), "jiffies": None}
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        out["jiffies"] = (sum(f[:8]), f[3] + f[4])  # user..steal; idle + iowait
    except (OSError, ValueError, IndexError):
        pass
    return out


def machine_state(a: dict, b: dict, threads: int = 1) -> dict:
    """Between two samples: loads, how many cores stood idle on average, and whether a core was free.

    "A core was free" means the bench did not wait for a core: the machine had idle time left beside it
    (on average at least half a core idle while it ran, from /proc/stat), or, where that cannot be read,
    the load average at the start left ``threads`` cores for it.
    """
    cores = os.cpu_count() or 1
    idle = None
    if a["jiffies"] and b["jiffies"] and b["jiffies"][0] > a["jiffies"][0]:
        idle = cores * (b["jiffies"][1] - a["jiffies"][1]) / (b["jiffies"][0] - a["jiffies"][0])
    if idle is not None:
        free = idle >= 0.5
    elif a["loadavg_1m"] is not None:
        free = a["loadavg_1m"] + threads <= cores
    else:
        free = None
    return {"cores": cores, "threads": threads, "loadavg_1m_start": a["loadavg_1m"],
            "loadavg_1m_end": b["loadavg_1m"], "idle_cores": idle, "core_free": free,
            "seconds": b["time"] - a["time"]}


def describe_machine(m: dict) -> str:
    """One line for a table's caption: the machine's load around the run and whether a core was free."""
    verdict = {True: "a core was free", False: "NO core was free (figures include waits for a core)",
               None: "unknown"}[m["core_free"]]
    idle = f", {m['idle_cores']:.2f} cores idle on average" if m["idle_cores"] is not None else ""
    return (f"machine: {m['cores']} cores, load average {fmt(m['loadavg_1m_start'], '.2f')} at the start, "
            f"{fmt(m['loadavg_1m_end'], '.2f')} now{idle}: {verdict}")


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 6) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def loadavg() -> Optional[float]:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# ----------------------------------------------------------------------------- statistics and tables


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Iterable[float]) -> dict:
    """median, min, max and quartiles of a sample (rounds or steps)."""
    xs = sorted(xs)
    if not xs:
        return {"n": 0, "median": float("nan"), "min": float("nan"), "max": float("nan")}
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1], "p25": q[0],
            "p75": q[2]}


def intervals(stamps: list[float], warmup: int) -> list[float]:
    """Step times from step-start stamps, the first ``warmup`` dropped."""
    return [b - a for a, b in zip(stamps, stamps[1:])][warmup:]


def fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        return format(v, spec or ".4g")
    return str(v)


def table(rows: list[dict], cols: list[tuple[str, str, str]]) -> str:
    """Aligned text table; cols are (row key, header, format spec)."""
    cells = [[h for _, h, _ in cols]] + [[fmt(r.get(k), s) for k, _, s in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rotate(items: list, k: int) -> list:
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]


# ----------------------------------------------------------------------------- running the trainer


def set_threads(n: Optional[int]) -> int:
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def load_cfg(recipe: Optional[str], overrides: list[str]):
    """A config as `python -m trainer train -c configs/RECIPE.yaml OVERRIDES` would load it."""
    from trainer import config as C

    path = None
    if recipe:
        path = recipe if recipe.endswith(".yaml") else os.path.join(ROOT, "configs", f"{recipe}.yaml")
    return C.load(path, overrides)


class StepClock:
    """Stamps the start of every ``Trainer._run_step`` call of a trainer built from ``trainer_cls()``.

    Records wall time (``stamps``), this thread's CPU time (``cpu``: on a machine shared with other jobs it
    moves much less than wall time, because waiting for a core does not count) and the time spent inside
    ``_run_step`` (``durations``; the rest of an interval is the loop's own code and the data fetch).
    ``on_step(trainer, index)`` runs before the stamp (a hook to synchronise a device at the edges of a
    timed window). The override costs well under a microsecond, and the raw loops stamp the same way, so
    both sides carry it.
    """

    def __init__(self, on_step: Optional[Callable[[Any, int], None]] = None):
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.durations: list[float] = []
        self.on_step = on_step

    def trainer_cls(self) -> type:
        """A ``Trainer`` subclass whose steps this clock stamps."""
        from trainer.training.loop import Trainer

        stamps, cpu, durations, hook = self.stamps, self.cpu, self.durations, self.on_step
        wall, thread = time.perf_counter, time.thread_time

        class ClockedTrainer(Trainer):
            def _run_step(self, micro_batches) -> None:
                if hook is not None:
                    hook(self, len(stamps))
                t0 = wall()
                stamps.append(t0)
                cpu.append(thread())
                super()._run_step(micro_batches)
                durations.append(wall() - t0)

        return ClockedTrainer


@contextlib.contextmanager
def captured_stderr():
    """The trainer logs every line to stderr; keep bench output to the table, show the log on failure."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            yield buf
    except BaseException:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise


def run_train(cfg, trainer_cls: Optional[type] = None) -> int:
    """`python -m trainer train` in-process (trainer.run.train: the real build and ``fit``), optionally
    with a ``Trainer`` subclass that times some of its verbs."""
    from trainer.run import train
    from trainer.training.loop import Trainer

    with captured_stderr():
        code = train(cfg, trainer_cls or Trainer)
    if code != 0:
        raise RuntimeError(f"trainer exited with code {code}")
    return code


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        return [r for r in map(json.loads, fh) if not r.get("eval")]


def inside_trainer(cfg, body: Callable[[Any], Any]) -> Any:
    """Run ``body(trainer)`` on the parts ``trainer.run.build(cfg)`` makes, in place of ``fit``; return its
    result.

    Everything `python -m trainer train` builds (process group for ddp/fsdp, accelerator, data, model,
    Strategy, optimizer, Trainer, logging, run dir) is built by the trainer's own code; only the loop is
    the bench's, so it can time a window, synchronise the device at its edges and skip the end-of-run eval,
    checkpoint and export. The process group is torn down in ``finally``, as ``train`` does.
    """
    from trainer.run import build

    with captured_stderr():
        parts = build(cfg)
        try:
            return body(parts.trainer)
        finally:
            parts.close()


class RowCatcher:
    """Stands in for trainer.metrics.Metrics so ``Trainer._log`` hands over the row it would write."""

    def __init__(self):
        self.rows: list[dict] = []

    def process_stats(self) -> dict:
        return {}

    def log_train(self, row: dict) -> None:
        self.rows.append(dict(row))


def positive_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
