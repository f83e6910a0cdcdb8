"""Model directories that would run code when loaded (issue 27, classes 6 and 7): custom code named by
``auto_map`` runs only with ``model.trust_remote_code=true`` (never after a prompt), and a directory with only
pickled weights is exit 2 with one line, nothing unpickled."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess

import pytest

from tests.conftest import PY, ROOT, run_cli
from tests.helpers import FAST
from tests.hfutil import make_model, make_tokenizer, qa_records, write_jsonl

pytest.importorskip("transformers")

CUSTOM = """
import os
import pathlib

pathlib.Path(os.environ["REMOTE_CODE_MARKER"]).write_text("the model directory's own code ran")

from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "custom-llama"


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
"""


CUSTOM_TOKENIZER = """
import os
import pathlib

pathlib.Path(os.environ["REMOTE_CODE_MARKER"]).write_text("the tokenizer directory's own code ran")

from transformers import PreTrainedTokenizerFast


class CustomTokenizer(PreTrainedTokenizerFast):
    pass
"""


class _Planted:
    """Unpickling this creates the marker file: proof that a pickle was (or was not) executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    tok = make_tokenizer(root / "tok")
    data = write_jsonl(root / "train.jsonl", qa_records(64, seed=1))
    custom = make_model(root / "custom", "llama")
    with open(os.path.join(custom, "config.json"), encoding="utf-8") as fh:
        c = json.load(fh)
    c["model_type"] = "custom-llama"  # not a transformers class: only the directory's code can build it
    c["architectures"] = ["CustomModel"]
    c["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    with open(os.path.join(custom, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(c, fh)
    with open(os.path.join(custom, "custom.py"), "w", encoding="utf-8") as fh:
        fh.write(CUSTOM)
    custom_tok = root / "custom_tok"
    shutil.copytree(tok, custom_tok)
    with open(custom_tok / "tokenizer_config.json", encoding="utf-8") as fh:
        t = json.load(fh)
    t["tokenizer_class"] = "CustomTokenizer"
    t["auto_map"] = {"AutoTokenizer": ["custom_tok.CustomTokenizer", "custom_tok.CustomTokenizer"]}
    with open(custom_tok / "tokenizer_config.json", "w", encoding="utf-8") as fh:
        json.dump(t, fh)
    (custom_tok / "custom_tok.py").write_text(CUSTOM_TOKENIZER)
    return {"root": root, "tok": tok, "data": data, "custom": custom, "custom_tok": str(custom_tok)}


def _train(assets, run_dir, model_dir, marker, extra=(), stdin=None, tok=None):
    args = [
        "train",
        f"run.dir={run_dir}",
        *FAST,
        "model.name=hf",
        f"model.path={model_dir}",
        "data.name=jsonl",
        f"data.path={assets['data']}",
        f"data.tokenizer={tok or assets['tok']}",
        "data.seq_len=32",
        "train.batch_size=4",
        "train.max_steps=2",
        "log.every_steps=1",
        *extra,
    ]
    env = {"REMOTE_CODE_MARKER": str(marker), "HF_MODULES_CACHE": str(assets["root"] / "modules")}
    e = dict(os.environ, PYTHONPATH=ROOT, **env)
    return subprocess.run(
        [PY, "-m", "trainer", *args],
        cwd=ROOT,
        env=e,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("where", ["tokenizer", "model"])
def test_custom_code_is_refused_without_a_prompt_even_when_stdin_says_yes(assets, tmp_path, where):
    # main: the tokenizer's auto_map made transformers ask "Do you wish to run the custom code? [y/N]" on
    # stdin, and the "y" waiting there ran it
    marker = tmp_path / "ran"
    model, tok = (
        (assets["custom"], None) if where == "model" else (make_model(tmp_path / "m"), assets["custom_tok"])
    )
    r = _train(assets, tmp_path / "run", model, marker, stdin="y\ny\ny\n", tok=tok)
    assert r.returncode == 2, r.stderr[-3000:]
    assert not marker.exists(), "the directory's own code ran"
    assert "[y/N]" not in r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if "config error" in ln]
    assert len(err) == 1 and "model.trust_remote_code=true" in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_trust_remote_code_true_runs_the_directory_code(assets, tmp_path):
    marker = tmp_path / "ran"
    r = _train(assets, tmp_path / "run", assets["custom"], marker, extra=["model.trust_remote_code=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.exists()


def test_pickled_weights_only_is_exit_2_and_nothing_is_unpickled(assets, tmp_path):
    # main: a 40-line traceback (exit 1) ending in torch's advice to pass weights_only=False
    d = make_model(tmp_path / "pickled", "llama")
    os.remove(os.path.join(d, "model.safetensors"))
    marker = tmp_path / "unpickled"
    with open(os.path.join(d, "pytorch_model.bin"), "wb") as fh:
        pickle.dump({"model.embed_tokens.weight": _Planted(str(marker))}, fh)
    r = run_cli(
        ["train", f"run.dir={tmp_path / 'run'}", *FAST, "model.name=hf", f"model.path={d}",
         "data.name=jsonl", f"data.path={assets['data']}", f"data.tokenizer={assets['tok']}",
         "data.seq_len=32", "train.max_steps=1"],
        timeout=240,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    assert not marker.exists(), "a pickle was executed"
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "pytorch_model.bin" in lines[0] and "safetensors" in lines[0]
    assert not (tmp_path / "run").exists()
