"""Side-by-side benchmarks of the trainer against plain PyTorch loops (see docs/performance.md).

Every script runs from the repository root as ``python -m bench.NAME [--smoke] [--out DIR]``, prints a
table and writes ``NAME-YYYYMMDD.json`` (``NAME-smoke-YYYYMMDD.json`` in smoke mode) under ``--out``, else
``$OUT``, else ``bench/results/``:

    overhead    CPU: trainer vs a raw loop (CNN, GPT recipes); per-step overhead in µs on a tiny MLP vs raw,
                accelerate and Lightning Fabric; where the trainer's step time goes
    datapipe    CPU: data-wait time / step time of the CNN and GPT recipes with the default loader settings
    startup     CPU: launch -> first step of the `make train` recipe, minus `import torch`
    checkpoint  CPU: checkpoint save time and step-loop blocking time, sync vs async
    gpu         one CUDA device: GPT-124M through the trainer and a plain loop (fp32/fp16/bf16/compile,
                DDP, accelerate, activation checkpointing, the recommended recipe); ``--smoke`` on CPU
    gpu_check   one CUDA device: every launch mode x precision runs (a correctness check, not a benchmark)
"""
