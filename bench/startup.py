"""Start-up cost: launch -> first step of `make train`'s recipe, beyond `import torch` (target <= 3 s).

    python -m bench.startup              # 5 interleaved rounds, under a minute on 2 cores
    python -m bench.startup --quick      # 2 rounds
    python -m bench.startup --only trainer  # a subset of the launches: python, torch, trainer
    python -m bench.startup --smoke      # one round (CI)

Each round launches, as subprocesses with the same interpreter and environment:
  * ``python -c pass``                    the bare interpreter
  * ``python -c "import torch"``          the part the target excludes
  * ``python -m trainer train -c configs/cnn.yaml run.dir=TMP log.every_steps=1 train.max_steps=3
    log.plot=false``                       the recipe (overrides only shorten the run and end it without the
                                           loss plot; nothing before the first step changes)
The first step's end is the ``time`` of the step-1 metrics row (wall clock, stamped by the loop right after
step 1; the writer thread writes the row and its log line a little later). The row's ``step_time_s`` (the
time from entering the loop to that log) gives the loop start. The ``data:`` and ``model:`` log lines
(timestamps in ``run.dir/logs/rank-0.log``, millisecond resolution), written once the data, model and
optimizer are built, split the rest.

"Beyond import torch" subtracts the ``import torch`` of the SAME launch, read from ``python -X importtime``
(every trainer launch runs under it; it adds a few % to every import, so the figure errs high): the separate
``python -c "import torch"`` process is shown for reference only, because on a loaded machine a separate
process can take longer than the whole launch, and the difference went <= 0. Each launch's CPU time (user
+ system of the child, from getrusage) is shown beside its wall time: waiting for a core does not count in
it. The JSON is rewritten after every round.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from . import common as B

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _env(tmp: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = B.ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MPLCONFIGDIR", os.path.join(tmp, "mpl"))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _wall(cmd: list[str], env: dict) -> dict:
    t0, c0 = time.time(), _children_cpu()
    r = subprocess.run(cmd, env=env, cwd=B.ROOT, capture_output=True, text=True, timeout=300)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")
    return {"exit": time.time() - t0, "cpu": _children_cpu() - c0}


def _stamp(line: str) -> float:
    m = _STAMP.match(line)
    if not m:
        raise ValueError(line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def train_cmd(run_dir: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", "-c", "configs/cnn.yaml", f"run.dir={run_dir}",
            "log.every_steps=1", f"train.max_steps={steps}", "log.plot=false"]


def launch_trainer(tmp: str, env: dict, steps: int, extra_flags: tuple = ()) -> dict:
    """Run the recipe once; seconds from launch to each milestone."""
    run_dir = os.path.join(tmp, f"run-{time.monotonic_ns()}")
    cmd = train_cmd(run_dir, steps)
    cmd[1:1] = list(extra_flags)
    t0, c0 = time.time(), _children_cpu()
    r = subprocess.run(cmd, env=env, cwd=B.ROOT, capture_output=True, text=True, timeout=600)
    t_exit, cpu = time.time() - t0, _children_cpu() - c0
    if r.returncode:
        raise RuntimeError(f"trainer exited {r.returncode}: {r.stderr[-3000:]}")
    with open(os.path.join(run_dir, "logs", "rank-0.log"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    marks = {}
    for line in lines:
        if " data: " in line and "data" not in marks:
            marks["data"] = _stamp(line) - t0
        elif " model: " in line and "model" not in marks:
            marks["model"] = _stamp(line) - t0
    missing = {"data", "model"} - set(marks)
    if missing:
        raise RuntimeError(f"rank-0.log of {run_dir} lacks the {', '.join(sorted(missing))} line(s); "
                           f"the trainer's log format changed")
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        first = next(r for r in map(json.loads, fh) if not r.get("eval"))
    if first["step"] != 1:
        raise RuntimeError(f"metrics.jsonl of {run_dir}: the first row is step {first['step']}, expected 1")
    marks["step1"] = first["time"] - t0
    marks["loop"] = marks["step1"] - first["step_time_s"]
    marks["torch"] = torch_import_s(r.stderr)
    marks["exit"] = t_exit
    marks["cpu"] = cpu  # the whole launch (3 steps, eval, checkpoint included)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"marks": marks, "stderr": r.stderr}


def torch_import_s(stderr: str) -> float:
    """Cumulative seconds of ``import torch`` in a ``python -X importtime`` launch (nested or not)."""
    for line in stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            _, cum, name = (part for part in line[len("import time:"):].split("|"))
            if name.strip() == "torch":
                return int(cum) / 1e6
    raise RuntimeError("python -X importtime output lists no `import torch`")


def top_imports(stderr: str, n: int = 10) -> list[dict]:
    """Top-level imports by cumulative time from ``python -X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cum, name = (part for part in line[len("import time:"):].split("|"))
        if name.startswith("  "):  # nested: counted in its parent's cumulative time
            continue
        rows.append({"module": name.strip(), "cumulative_s": int(cum) / 1e6})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:n]


TASKS = ("python", "torch", "trainer")


def main(argv=None) -> None:
    p = B.parser("startup", __doc__)
    B.add_only(p, list(TASKS), "launch(es)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds (default 5, quick 2, smoke 1)")
    args = p.parse_args(argv)
    only = B.only(p, args)
    rounds = args.rounds or (1 if args.smoke else 2 if args.quick else 5)
    tmp = tempfile.mkdtemp(prefix="bench-startup-")
    env = _env(tmp)
    py = sys.executable
    stderr = {}

    def trainer() -> dict:
        # -X importtime: this launch's own `import torch` time (and the import list)
        out = launch_trainer(tmp, env, 3, ("-X", "importtime"))
        stderr["last"] = out["stderr"]
        return out["marks"]

    tasks = {"python": lambda: _wall([py, "-c", "pass"], env),
             "torch": lambda: _wall([py, "-c", "import torch"], env),
             "trainer": trainer}
    tasks = {k: v for k, v in tasks.items() if k in only}
    settings = {"rounds": rounds, "command": " ".join(train_cmd("TMP", 3)[1:]), "launches": list(tasks)}
    rep = B.Report("startup", args, settings)
    res: dict[str, list[dict]] = defaultdict(list)
    try:
        if not args.smoke and "trainer" in tasks:
            launch_trainer(tmp, env, 1)  # warm the page cache: the first launch after install is colder
        for r in range(rounds):
            for name in B.rotate(list(tasks), r):
                res[name].append(tasks[name]())
                rep.set_rows(rows_for(res))
            line = ", ".join(f"{k} {v[-1].get('step1', v[-1]['exit']):.2f}s" for k, v in res.items())
            print(f"  round {r + 1}/{rounds}: {line}", flush=True)
        if "trainer" in res:
            beyond = [t["step1"] - t["torch"] for t in res["trainer"]]
            rep.doc["imports"] = top_imports(stderr["last"])
            rep.doc["first_step_beyond_import_torch_s"] = B.median(beyond)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"launch -> first step, `make train` recipe (configs/cnn.yaml), {rounds} round(s), seconds")
    print(B.table(rep.rows, [("what", "what", ""), ("s", "median s", ".2f"), ("min_s", "min", ".2f"),
                             ("max_s", "max", ".2f"), ("cpu_s", "CPU s", ".2f"), ("note", "", "")]))
    if "imports" in rep.doc:
        print("\nslowest top-level imports of one launch (python -X importtime; cumulative, seconds)")
        print(B.table(rep.doc["imports"], [("module", "module", ""), ("cumulative_s", "s", ".2f")]))
    print(rep.machine_line())
    print(f"wrote {rep.close()}")


def rows_for(res: dict[str, list[dict]]) -> list[dict]:
    """The table from the rounds finished so far: median and range over launches, CPU time beside."""
    rows = []

    def add(what: str, xs: list[float], note: str = "", cpu: list[float] | None = None) -> None:
        sp = B.spread(xs)
        rows.append({"what": what, "s": sp["median"], "min_s": sp["min"], "max_s": sp["max"],
                     "cpu_s": B.median(cpu) if cpu else None, "note": note})

    if res.get("python"):
        add("python -c pass (interpreter)", [x["exit"] for x in res["python"]],
            cpu=[x["cpu"] for x in res["python"]])
    if res.get("torch"):
        add("python -c 'import torch' (a separate process, for reference)", [x["exit"] for x in res["torch"]],
            cpu=[x["cpu"] for x in res["torch"]])
    tr = res.get("trainer")
    if not tr:
        return rows
    # Each launch minus its own `import torch` (measured in that process, so never more than the launch).
    beyond = [t["step1"] - t["torch"] for t in tr]
    add("import torch inside the trainer launch (excluded)", [t["torch"] for t in tr], "python -X importtime")
    add("launch -> data, model, optimizer built ('model:' log line)", [t["model"] for t in tr])
    add("launch -> training loop entered", [t["loop"] for t in tr], "step-1 row time - step_time_s")
    add("launch -> first step done (step-1 metrics row)", [t["step1"] for t in tr])
    add("first step done, beyond import torch", beyond, "target <= 3 s")
    add("  of which: loop entered -> step 1 logged", [t["step1"] - t["loop"] for t in tr])
    add("  of which: built -> loop entered (Trainer, Metrics)", [t["loop"] - t["model"] for t in tr])
    add("launch -> process exit (3 steps, eval, checkpoint)", [t["exit"] for t in tr], "CPU: whole launch",
        cpu=[t["cpu"] for t in tr])
    return rows

if __name__ == "__main__":
    main()
