"""Regenerate the measured tables of docs/finetune.md and docs/compress.md by running their commands.

    python docs/figures.py            # from the repository root, in the venv; a few minutes on 2 CPU cores

Each table sits between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->`` in its page and is
replaced whole, with a line saying where and when it was measured. Nothing else in the pages changes, so
the prose around a table must not quote its numbers (docs/design.md "Docs").
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLD = 0.95
EVAL_EVERY = "train.eval_every_steps=5"
SCRATCH = ["model.init_from=null", "model.init_skip=[]", "train.freeze=[]", "optim.param_groups=[]"]
LORA = ["lora.targets=[fc1]", "lora.trainable=[fc2]", "optim.param_groups=[]", "train.freeze=[]"]


def trainer(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TRAINER_OVERRIDES", None)  # the figures are of the commands as written
    subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env, check=True)


def evals(run_dir: str) -> list[tuple[int, float]]:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [(r["step"], r["accuracy"]) for r in rows if r.get("eval") and "accuracy" in r]


def finetune_row(name: str, run_dir: str) -> str:
    points = evals(run_dir)
    first = next((s for s, a in points if a >= THRESHOLD), None)
    stays = None
    for s, _ in points:
        if all(a >= THRESHOLD for t, a in points if t >= s):
            stays = s
            break
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
        summary = json.load(fh)
    final = f"{summary['eval']['accuracy']:.4f} ({summary['steps']} steps)"
    show = [f"**{first}**" if first is not None else "never", str(stays) if stays is not None else "never"]
    return f"| {name} | {show[0]} | {show[1]} | {final} |"


def finetune_table(work: str) -> str:
    runs = {k: os.path.join(work, k) for k in ("pretrain", "finetune", "scratch", "cnn", "lora")}
    trainer("train", "-c", "configs/cnn_pretrain.yaml", f"run.dir={runs['pretrain']}")
    ft = ["-c", "configs/finetune_cnn.yaml", f"model.init_from={runs['pretrain']}", EVAL_EVERY]
    trainer("train", *ft, f"run.dir={runs['finetune']}")
    trainer("train", *ft, *SCRATCH, f"run.dir={runs['scratch']}")
    trainer("train", *ft, *LORA, f"run.dir={runs['lora']}")
    trainer("train", "-c", "configs/cnn.yaml", EVAL_EVERY, f"run.dir={runs['cnn']}")
    return "\n".join(
        [
            "| run | steps to 95% | stays ≥ 95% from | final accuracy |",
            "| --- | ---: | ---: | ---: |",
            finetune_row("fine-tune from the 0-4 model (`configs/finetune_cnn.yaml`)", runs["finetune"]),
            finetune_row("from scratch, same recipe and schedule", runs["scratch"]),
            finetune_row(f"from scratch, `configs/cnn.yaml` (`{EVAL_EVERY}`)", runs["cnn"]),
            finetune_row("LoRA on `fc1` (rank 8) + `fc2` trained, the rest frozen", runs["lora"]),
        ]
    )


def compress_table(work: str) -> str:
    source = os.path.join(work, "finetune")
    outs = {
        "int8": ["--method", "quantize", "--scheme", "int8-dynamic,int8-weight,torch-ao-dynamic"],
        "sparse": ["--method", "prune", "--amount", "0.8", "--scope", "global", "--finetune-steps", "50"],
        "slim": ["--method", "prune", "--amount", "0.5", "--scope", "channel", "--finetune-steps", "50"],
    }
    reports = {}
    for name, args in outs.items():
        out = os.path.join(work, f"cnn-{name}")
        trainer("compress", "--from", source, *args, "--out", out, "--threads", "1")
        with open(os.path.join(out, "report.json"), encoding="utf-8") as fh:
            reports[name] = json.load(fh)
    lines = [
        "| variant | accuracy | size on disk | Linear weights | params | sparsity | ms/batch | Linear ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def row(r: dict, label: str, source_ms: float | None = None) -> str:
        ms = f"{r['latency_ms']:.2f}" + (f" (source {source_ms:.2f})" if source_ms is not None else "")
        return (
            f"| {label} | {r['value']:.4f} | {r['size_bytes'] / 1e6:.3f} MB | "
            f"{r['linear_weight_bytes'] / 1e6:.3f} MB | {r['params']:,} | {100 * r['sparsity']:.2f}% | "
            f"{ms} | {r['linear_latency_ms']:.2f} |"
        )

    base, *quantized = reports["int8"]["rows"]
    lines.append(row(base, "source (fp32, safetensors)"))
    lines += [row(r, r["variant"]) for r in quantized]
    pruned_rows = (("sparse", "unstructured global −80% + 50 steps"), ("slim", "channels −50% + 50 steps"))
    for name, label in pruned_rows:
        src, pruned = reports[name]["rows"][0], reports[name]["rows"][-1]
        lines.append(row(pruned, label, src["latency_ms"]))
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, 1-minute load {load:.1f}, "
        f"{datetime.date.today().isoformat()}"
    )


def replace(page: str, name: str, table: str, where: str) -> None:
    path = os.path.join(ROOT, "docs", page)
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    start, end = f"<!-- figures:{name} -->", f"<!-- /figures:{name} -->"
    body = f"{start}\n_Generated by `python docs/figures.py` on {where}._\n\n{table}\n{end}"
    new, n = re.subn(re.escape(start) + r".*?" + re.escape(end), lambda _: body, text, flags=re.S)
    if n != 1:
        raise SystemExit(f"docs/{page}: expected one {start} ... {end} pair, found {n}")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(new)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="figures-") as work:
        finetune = finetune_table(work)
        compress = compress_table(work)
        where = machine()
    replace("finetune.md", "finetune", finetune, where)
    replace("compress.md", "compress", compress, where)
    print(finetune, compress, sep="\n\n")


if __name__ == "__main__":
    main()
