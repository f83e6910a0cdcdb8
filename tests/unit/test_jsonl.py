"""data.name=jsonl: records -> tokens (EOS, prompt masks, chat turns), the token cache, packing, and errors
that name the line; attention stays inside a packed document for a transformers model."""

import json

import pytest
import torch

from tests.conftest import run_cli
from tests.hfutil import make_model, make_tokenizer, qa_records, write_jsonl
from trainer import config as C
from trainer.config import ConfigError
from trainer.data import build_datasets
from trainer.data.jsonl import IGNORE, pack, tokenize_records
from trainer.data.tokenizer import load_tokenizer

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("jsonl")
    tok_dir = make_tokenizer(root / "tok")
    make_model(root / "model", "llama", tok_dir=tok_dir)
    return root, tok_dir, load_tokenizer(tok_dir)


def _cfg(root, tok_dir, path, *extra):
    return C.load(
        None,
        [
            "data.name=jsonl",
            f"data.path={path}",
            f"data.tokenizer={tok_dir}",
            "model.name=hf",
            f"model.path={root.parent / 'model'}",
            f"run.dir={root / 'run'}",
            "data.seq_len=32",
            *extra,
        ],
    )


def test_prompt_tokens_carry_no_loss_and_eos_ends_every_document(assets, tmp_path):
    root, tok_dir, tok = assets
    recs = [{"prompt": "next after two:", "response": " three"}, {"text": "one two"}]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    ids, learn, offs = tokenize_records(tok, path, "data.path")
    p = tok("next after two:")["input_ids"]
    r = tok(" three", add_special_tokens=False)["input_ids"]
    t = tok("one two")["input_ids"]
    eos = tok.eos_token_id
    assert ids.tolist() == p + r + [eos] + t + [eos]
    assert learn.tolist() == [0] * len(p) + [1] * (len(r) + 1) + [1] * (len(t) + 1)
    assert offs.tolist() == [0, len(p) + len(r) + 1, len(ids)]

    inp, pos, lab, cut = pack(ids, learn, offs, 32, tok.pad_token_id)
    assert inp.shape == (1, 32) and cut == 0
    n1 = len(p) + len(r) + 1
    # labels are the next token where it is learned: none inside the prompt, the response and its EOS
    assert (lab[0, : len(p) - 1] == IGNORE).all()
    assert lab[0, len(p) - 1 : n1 - 1].tolist() == r + [eos]
    assert lab[0, n1 - 1] == IGNORE  # the EOS of document 1 does not predict document 2
    assert pos[0, :n1].tolist() == list(range(n1)) and pos[0, n1] == 0  # positions restart per document
    assert (lab[0, len(ids) - 1 :] == IGNORE).all()  # padding carries no loss


def test_packing_keeps_documents_whole_and_apart_by_eos(assets, tmp_path):
    root, tok_dir, tok = assets
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(40))
    ids, learn, offs = tokenize_records(tok, path, "data.path")
    inp, pos, lab, _ = pack(ids, learn, offs, 32, tok.pad_token_id)
    eos = tok.eos_token_id
    docs = [ids[a:b].tolist() for a, b in zip(offs[:-1], offs[1:])]
    got = []
    for r in range(len(inp)):
        starts = [i for i in range(32) if pos[r, i] == 0]
        for a, b in zip(starts, starts[1:] + [32]):
            seg = inp[r, a:b].tolist()
            if seg[0] == tok.pad_token_id:
                continue
            assert seg[-1] == eos and eos not in seg[:-1]  # one document per segment, ended by EOS
            got.append(seg)
    assert got == docs  # every document once, whole, in file order


def test_chat_records_learn_only_the_assistant_turns(assets, tmp_path):
    root, tok_dir, tok = assets
    msgs = [{"role": "user", "content": "next after one:"}, {"role": "assistant", "content": "two"}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": msgs}])
    ids, learn, _ = tokenize_records(tok, path, "data.path")
    learned = tok.decode([i for i, m in zip(ids.tolist(), learn.tolist()) if m])
    assert learned == "two<|end|><|eos|>"
    # a tokenizer without a chat template: a clear error naming the line
    plain = make_tokenizer(tmp_path / "plain", chat_template=False)
    with pytest.raises(
        ConfigError, match=r"line 1: a 'messages' record needs a tokenizer with a chat template"
    ):
        tokenize_records(load_tokenizer(plain), path, "data.path")


def test_tokens_are_cached_beside_the_run_keyed_by_data_and_tokenizer(assets, tmp_path):
    root, tok_dir, _ = assets
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(30))
    cfg = _cfg(root / "c", tok_dir, path)
    cache = root / "c" / ".token-cache"
    tr, ev, info = build_datasets(cfg)
    assert "(cached tokens)" not in info.description and info.extra["loss_mask"]
    assert len(list(cache.iterdir())) == 1
    tr2, _, info2 = build_datasets(cfg)
    assert "cached tokens" in info2.description and info2.fingerprint == info.fingerprint
    assert torch.equal(tr.labels, tr2.labels)
    x, y = tr.get_batch([0, 1])
    assert set(x) == {"input_ids", "position_ids"} and x["input_ids"].shape == y.shape == (2, 32)
    with open(path, "a", encoding="utf-8") as fh:  # new data: a new cache entry
        fh.write(json.dumps({"text": "more"}) + "\n")
    build_datasets(cfg)
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize(
    "line, why",
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": 3, "response": "x"}', "'prompt' must be a string"),
        ('{"question": "x"}', "expected a 'text', 'prompt'/'response' or 'messages' record"),
    ],
)
def test_bad_records_name_the_line(assets, tmp_path, line, why):
    root, tok_dir, tok = assets
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + "\n")
    with pytest.raises(ConfigError, match=f"line 3: {why}"):
        tokenize_records(tok, str(path), "data.path")


def test_malformed_line_is_exit_2_naming_the_line_and_leaves_nothing(assets, tmp_path):
    root, tok_dir, _ = assets
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "two"\n')
    run = tmp_path / "run"
    r = run_cli(
        [
            "train",
            "data.name=jsonl",
            f"data.path={path}",
            f"model.path={root / 'model'}",
            "model.name=hf",
            f"run.dir={run}",
            "data.seq_len=16",
            "device=cpu",
        ],
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"data.path='{path}' line 2: not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr and not run.exists()


def test_attention_stays_inside_a_packed_document(assets, tmp_path):
    """transformers builds a block-diagonal mask from restarting position ids (use_cache off): the logits
    of a packed document equal those of the document alone."""
    from trainer.models.hf import load_pretrained

    root, tok_dir, tok = assets
    model = load_pretrained(make_model(tmp_path / "m", "llama"), torch.float32).eval()
    a, b = tok("next after one: two")["input_ids"], tok("next after six: seven")["input_ids"]
    ids = torch.tensor([a + b])
    pos = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=pos).logits[0, len(a) :]
        alone = model(input_ids=torch.tensor([b])).logits[0]
        crossing = model(input_ids=ids).logits[0, len(a) :]  # positions not restarted: attends across
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(crossing, alone, atol=1e-3)


def test_config_errors_for_jsonl_and_hf(tmp_path):
    with pytest.raises(ConfigError, match="model.path=None: model.name=hf needs"):
        C.load(None, ["model.name=hf"])
    with pytest.raises(ConfigError, match="no config.json there"):
        C.load(None, ["model.name=hf", f"model.path={tmp_path}"])
    f = tmp_path / "d.jsonl"
    f.write_text("{}\n")
    with pytest.raises(ConfigError, match="model.name='cnn': data.name=jsonl feeds named inputs"):
        C.load(None, ["data.name=jsonl", f"data.path={f}"])
    with pytest.raises(ConfigError, match="data.tokenizer=None: data.name=jsonl with model.name='m:Net'"):
        C.load(None, ["data.name=jsonl", f"data.path={f}", "model.name=m:Net"])


def test_batched_tokenization_equals_one_call_per_text_across_batch_edges(assets, tmp_path, monkeypatch):
    """Records are tokenized a batch at a time (issue 28); with batches of 3, seven mixed records cross two
    batch edges and every document is still what one tokenizer call per text gives, in file order."""
    from trainer.data import jsonl

    _, _, tok = assets
    recs = [
        {"prompt": "next after two:", "response": " three"},
        {"text": "one two"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"}]},
        {"prompt": "", "response": ""},
        {"text": "three four five"},
        {"prompt": "next after six:", "response": " seven"},
        {"text": "nine"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", recs)
    monkeypatch.setattr(jsonl, "_READ_BATCH", 3)
    ids, learn, offs = tokenize_records(tok, path, "data.path")
    eos = tok.eos_token_id
    want_ids, want_learn = [], []
    for rec in recs:
        if "messages" in rec:
            d, on = jsonl._chat(tok, "x", 0, rec["messages"])
            d, on = list(d), [int(b) for b in on]
        elif "prompt" in rec:
            p = tok(rec["prompt"])["input_ids"]
            r = tok(rec["response"], add_special_tokens=False)["input_ids"]
            d, on = p + r, [0] * len(p) + [1] * len(r)
        else:
            d = tok(rec["text"])["input_ids"]
            on = [1] * len(d)
        if not d or d[-1] != eos:
            d, on = d + [eos], on + [on[-1] if on else 1]
        want_ids += d
        want_learn += on
    assert ids.tolist() == want_ids and learn.tolist() == want_learn
    assert len(offs) == len(recs) + 1 and offs[-1] == len(ids)
