"""model.safetensors bytes are a function of the weights and metadata only (issue 27, class 9)."""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file

from trainer.checkpoint.weights import write_safetensors


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_saves_are_identical_bytes_with_sorted_metadata(tmp_path):
    # safetensors keeps __metadata__ in a Rust HashMap whose order changes per map: on main, 8 saves of the
    # same weights with a few metadata keys gave several different hashes
    state = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    meta = {k: f"v{i}" for i, k in enumerate(["lora", "zeta", "alpha", "mid", "q", "run"])}
    hashes = set()
    for i in range(8):
        p = tmp_path / f"m{i}.safetensors"
        write_safetensors(state, str(p), meta)
        hashes.add(_sha(p))
    assert len(hashes) == 1, f"{len(hashes)} different files from 8 identical saves"
    raw = p.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n], object_pairs_hook=lambda kv: kv)
    metadata = dict(header)["__metadata__"]
    assert [k for k, _ in metadata] == sorted(k for k, _ in metadata)
    back = load_file(str(p))  # still a valid file with the same tensors
    assert torch.equal(back["w"], state["w"]) and torch.equal(back["b"], state["b"])
