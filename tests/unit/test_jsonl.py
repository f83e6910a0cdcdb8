"""data.name=jsonl: records -> tokens (EOS, prompt masks, chat turns), the token cache, packing, and errors
that name the line; attention stays inside a packed document for a transformers model."""

import json

import numpy as np
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
    return C.load(None, _cfg_args(root, tok_dir, path, *extra))


def _cfg_args(root, tok_dir, path, *extra):
    return [
        "data.name=jsonl",
        f"data.path={path}",
        f"data.tokenizer={tok_dir}",
        "model.name=hf",
        f"model.path={root.parent / 'model'}",
        f"run.dir={root / 'run'}",
        "data.seq_len=32",
        *extra,
    ]


def test_prompt_tokens_carry_no_loss_and_eos_ends_every_document(assets, tmp_path):
    root, tok_dir, tok = assets
    recs = [{"prompt": "next after two:", "response": " three"}, {"text": "one two"}]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    enc = tokenize_records(tok, path, "data.path")
    ids, learn, offs = enc.ids, enc.learn, enc.offsets
    p = tok("next after two:")["input_ids"]
    r = tok(" three", add_special_tokens=False)["input_ids"]
    t = tok("one two")["input_ids"]
    eos = tok.eos_token_id
    assert ids.tolist() == p + r + [eos] + t + [eos]
    assert learn.tolist() == [0] * len(p) + [1] * (len(r) + 1) + [1] * (len(t) + 1)
    assert offs.tolist() == [0, len(p) + len(r) + 1, len(ids)]

    pk = pack(enc, 32, tok.pad_token_id)
    inp, pos, lab = pk.input_ids, pk.position_ids, pk.labels
    assert inp.shape == (1, 32) and pk.docs[:, 3].sum() == 0 and pk.dropped == 0
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
    enc = tokenize_records(tok, path, "data.path")
    ids, offs = enc.ids, enc.offsets
    pk = pack(enc, 32, tok.pad_token_id)
    inp, pos = pk.input_ids, pk.position_ids
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
    enc = tokenize_records(tok, path, "data.path")
    learned = tok.decode([i for i, m in zip(enc.ids.tolist(), enc.learn.tolist()) if m])
    assert learned == "two<|end|><|eos|>"
    # a tokenizer without a chat template: the documented default (### User: / ### Assistant: blocks)
    plain = load_tokenizer(make_tokenizer(tmp_path / "plain", chat_template=False))
    enc = tokenize_records(plain, path, "data.path")
    text = plain.decode(enc.ids.tolist())
    learned = plain.decode([i for i, m in zip(enc.ids.tolist(), enc.learn.tolist()) if m])
    assert text == "### User:\nnext after one:\n\n### Assistant:\ntwo<|eos|>"
    assert learned == "two<|eos|>"


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
        ('{"question": "x"}', "expected a 'text', 'prompt'/'response', 'messages', 'conversations'"),
        (
            '{"messages": [{"role": "assistant", "content": "x", "weight": 2}]}',
            "a message 'weight' must be 0 or 1",
        ),
        ('{"conversations": [{"from": "bot", "value": "x"}]}', "'from': 'bot' is not one of"),
        (  # an OpenAI export with a tool call: which message, and why
            '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": null}]}',
            "message 2 \\(assistant\\): 'content' must be a string, got NoneType",
        ),
        ('{"instruction": "x", "output": 3}', "'output' must be a string"),
        # a prompt without an answer (preference data) names the missing key, not "got NoneType"
        (
            '{"prompt": "x", "chosen": "a", "rejected": "b"}',
            "data.format=prompt_response: the record has no 'response'",
        ),
    ],
)
def test_bad_records_name_the_line(assets, tmp_path, line, why):
    root, tok_dir, tok = assets
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n' + line + "\n")
    with pytest.raises(ConfigError, match=f"line 3: {why}"):
        tokenize_records(tok, str(path), "data.path")


def test_a_windows_export_with_bom_and_crlf_reads_as_the_plain_file(assets, tmp_path):
    # Notepad / PowerShell 5 save UTF-8 with a BOM and CRLF line ends: the same records, not "line 1: not
    # valid JSON (Unexpected UTF-8 BOM)"
    root, tok_dir, tok = assets
    recs = [json.dumps(r, ensure_ascii=False) for r in qa_records(5)] + ['{"text": "héllo ✓"}']
    plain, windows = tmp_path / "plain.jsonl", tmp_path / "windows.jsonl"
    plain.write_text("\n".join(recs) + "\n", encoding="utf-8")
    windows.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(recs).encode("utf-8") + b"\r\n")
    a = tokenize_records(tok, str(plain), "data.path")
    b = tokenize_records(tok, str(windows), "data.path")
    assert a.documents == b.documents == 6
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.learn, b.learn)


def test_every_document_dropped_says_so_not_more_records_needed(assets, tmp_path):
    # data.truncation=drop with every record longer than data.seq_len: the cause and the two ways out,
    # not "no training rows after the split (more records needed)"
    root, tok_dir, _ = assets
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 60, "response": " yes"}] * 4)
    cfg = _cfg(root / "d", tok_dir, path, "data.truncation=drop")
    with pytest.raises(ConfigError) as e:
        build_datasets(cfg)
    msg = str(e.value)
    assert "all 4 document(s) are longer than data.seq_len=32" in msg and "data.truncation=left" in msg, msg


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


def test_a_batch_encodes_exactly_as_each_record_alone(assets, tmp_path):
    """encode_records is batch-first (one tokenizer call for every segment of the batch): the ids and masks
    equal record-by-record encoding, and the tokenizers-backend call equals transformers' tok()."""
    from trainer.data.jsonl import encode_records, token_ids

    root, tok_dir, tok = assets
    recs = [
        {"text": "one two"},
        {"prompt": "next after two:", "response": " three"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"instruction": "add", "input": "1 2", "output": "3"},
        {"text": ""},
    ] * 3
    batch = encode_records(tok, recs)
    assert batch.formats == {"text": 6, "prompt_response": 3, "messages": 3, "sharegpt": 3, "alpaca": 3}
    for i, r in enumerate(recs):
        one = encode_records(tok, [r])
        a, b = batch.offsets[i], batch.offsets[i + 1]
        assert one.ids.tolist() == batch.ids[a:b].tolist() and one.learn.tolist() == batch.learn[a:b].tolist()
    assert batch.ids[batch.offsets[-2] :].tolist() == [tok.eos_token_id]  # an empty text is its EOS alone
    texts = ["next after two:", " three", "<|user|>hi<|end|>", ""]
    assert token_ids(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]


def test_trainer_data_shows_shapes_for_data_that_is_not_text(capfd):
    from tests.integration.test_finetune_cli import tool

    r = tool(["data", "data.name=digits", "--json", "--show", "2"], capfd)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["format"] == "digits" and got["documents"] > 1000 and got["learned_tokens"] is None
    assert got["samples"] == [{"x": "float32 (1, 28, 28)", "y": "int64 ()"}] * 2


def test_trainer_data_builds_what_train_builds_from_the_same_cache(assets, tmp_path, capfd):
    from tests.integration.test_finetune_cli import tool

    root, tok_dir, _ = assets
    path = write_jsonl(tmp_path / "d.jsonl", qa_records(30))
    over = _cfg_args(root / "c2", tok_dir, path)
    r = tool(["data", *over, "--json", "--show", "1"], capfd)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    tr, _, info = build_datasets(C.load(None, over))  # what train builds: served by the tool's cache
    assert "(cached tokens)" in info.description
    assert shown["learned_tokens"] == int((tr.labels != IGNORE).sum()) and shown["documents"] == len(tr.docs)


def test_truncation_left_keeps_the_end_and_a_leading_bos_right_the_start_drop_leaves_out():
    from trainer.data.jsonl import Encoded

    # document 0: BOS(1) p p p p r r EOS(2), response learned; document 1 fits
    ids = np.array([1, 10, 11, 12, 13, 20, 21, 2, 1, 30, 2], np.int32)
    learn = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1, 1], np.uint8)
    enc = Encoded(ids, learn, np.array([0, 8, 11]))
    left = pack(enc, 5, 0, "left", bos=1)
    assert left.input_ids[0].tolist() == [1, 13, 20, 21, 2] and left.docs[0].tolist() == [0, 0, 5, 1]
    assert left.labels[0].tolist() == [IGNORE, 20, 21, 2, IGNORE]  # the response and EOS still learned
    assert pack(enc, 5, 0, "left").input_ids[0].tolist() == [12, 13, 20, 21, 2]  # no BOS to keep
    right = pack(enc, 5, 0, "right", bos=1)
    assert right.input_ids[0].tolist() == [1, 10, 11, 12, 13] and (right.labels[0] == IGNORE).all()
    drop = pack(enc, 5, 0, "drop", bos=1)
    assert drop.dropped == 1 and len(drop.docs) == 1 and drop.input_ids[0, :3].tolist() == [1, 30, 2]
