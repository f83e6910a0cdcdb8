"""JSONL record layouts as people export them, each turned into text segments that are learned or not.

One record is one document. ``data.format=auto`` picks the layout per record by its keys, first match:

==================  ==========================================================  ===========================
layout              record                                                      learned (data.train_on=
                                                                                assistant)
==================  ==========================================================  ===========================
``messages``        ``{"messages": [{"role", "content", "weight"?}, ...]}``       assistant turns whose
                    (OpenAI fine-tuning; system/user/assistant, multi-turn)     ``weight`` is not 0
``sharegpt``        ``{"conversations": [{"from", "value"}, ...]}`` (``from``:  the gpt/assistant turns
                    system, human/user, gpt/assistant)
``alpaca``          ``{"instruction", "input"?, "output"}`` (a ``text`` field   ``output``
                    beside them is ignored: the structured fields win)
``prompt_response`` ``{"prompt", "response"}`` (or ``"completion"``)            ``response``
``text``            ``{"text"}``                                                every token
==================  ==========================================================  ===========================

``data.format=NAME`` forces one layout (a record without its fields is an error naming the line);
``data.train_on=all`` learns every token of every layout.

Conversations (messages, sharegpt, and alpaca as one user turn + one assistant turn, ``instruction`` and
``input`` joined by a blank line) are rendered with the tokenizer's own chat template, or, when it has none,
with :data:`DEFAULT_CHAT_TEMPLATE` (``### User:`` / ``### Assistant:`` blocks, each assistant turn ended by
EOS). An assistant turn's learned text runs from the end of the rendering up to it *with* the generation
prompt (so the role header is not learned) to the end of the rendering that includes it (its end-of-turn
marker is learned, so the model learns to stop). A template that does not render conversations as prefixes
of each other falls back to learning the assistant's text where it appears in the full rendering.
``prompt_response`` and ``text`` are not templated: the prompt and the response are joined as they are.

Everything here is pure string work on parsed records (no token ids, no I/O): ``jsonl.encode_records``
tokenizes the segments of a whole batch of records in one tokenizer call.
"""

from __future__ import annotations

from typing import Any, Optional

FORMATS = ("text", "prompt_response", "messages", "sharegpt", "alpaca")

# The documented default chat template (README "Fine-tune"): for tokenizers without one of their own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'assistant' %}### Assistant:\n{{ m['content'] }}{{ eos_token }}"
    "{% else %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}

Segments = list[tuple[str, bool]]  # (text, learned), in document order


class RecordError(ValueError):
    """A record that does not fit its layout; the caller adds the file and the line."""


def detect(rec: dict) -> Optional[str]:
    """The layout of one record by its keys (see the module docstring), or None."""
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec or "response" in rec or "completion" in rec:
        return "prompt_response"
    if "text" in rec:
        return "text"
    return None


def _str(rec: dict, field: str) -> str:
    v = rec.get(field)
    if not isinstance(v, str):
        raise RecordError(f"{field!r} must be a string, got {type(v).__name__}")
    return v


def _weight(m: dict, role: str) -> bool:
    """OpenAI's per-message ``weight``: 0 = not learned, 1 = learned; only on assistant messages."""
    if "weight" not in m:
        return True
    w = m["weight"]
    if w not in (0, 1) or isinstance(w, bool):
        raise RecordError(f"a message 'weight' must be 0 or 1, got {w!r}")
    if role != "assistant":
        raise RecordError(f"'weight' is only honoured on assistant messages, got it on a {role!r} message")
    return w == 1


def _messages(rec: dict) -> tuple[list[dict], list[bool]]:
    msgs = rec["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise RecordError("'messages' must be a non-empty list")
    out, learn = [], []
    for i, m in enumerate(msgs, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RecordError("each message needs a string 'role' and 'content'")
        if not isinstance(m.get("content"), str):  # tool calls (content null), content parts (a list)
            raise RecordError(
                f"message {i} ({m['role']}): 'content' must be a string, got "
                f"{type(m.get('content')).__name__} (tool calls and content parts are not supported)"
            )
        out.append({"role": m["role"], "content": m["content"]})
        learn.append(m["role"] == "assistant" and _weight(m, m["role"]))
    return out, learn


def _sharegpt(rec: dict) -> tuple[list[dict], list[bool]]:
    turns = rec["conversations"]
    if not isinstance(turns, list) or not turns:
        raise RecordError("'conversations' must be a non-empty list")
    out, learn = [], []
    for t in turns:
        if (
            not isinstance(t, dict)
            or not isinstance(t.get("from"), str)
            or not isinstance(t.get("value"), str)
        ):
            raise RecordError("each turn of 'conversations' needs a string 'from' and 'value'")
        role = SHAREGPT_ROLES.get(t["from"].lower())
        if role is None:
            raise RecordError(f"'from': {t['from']!r} is not one of {', '.join(SHAREGPT_ROLES)}")
        out.append({"role": role, "content": t["value"]})
        learn.append(role == "assistant" and _weight(t, role))
    return out, learn


def _alpaca(rec: dict) -> tuple[list[dict], list[bool]]:
    instruction, output = _str(rec, "instruction"), _str(rec, "output")
    extra = rec.get("input") or ""
    if not isinstance(extra, str):
        raise RecordError(f"'input' must be a string, got {type(extra).__name__}")
    user = f"{instruction}\n\n{extra}" if extra else instruction
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    if isinstance(rec.get("system"), str) and rec["system"]:
        msgs.insert(0, {"role": "system", "content": rec["system"]})
    return msgs, [m["role"] == "assistant" for m in msgs]


def _render(tok, msgs: list[dict], gen: bool) -> str:
    template = None if getattr(tok, "chat_template", None) else DEFAULT_CHAT_TEMPLATE
    try:
        return tok.apply_chat_template(
            msgs, chat_template=template, tokenize=False, add_generation_prompt=gen
        )
    except Exception as e:  # jinja's TemplateError ("roles must alternate ..."), or a template bug
        raise RecordError(f"the chat template failed: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _located(whole: str, msgs: list[dict], learn: list[bool]) -> Segments:
    """Fallback for templates whose renderings are not prefixes of each other: each learned turn's own
    text, found in order in the full rendering."""
    segs: Segments = []
    cursor = 0
    for m, on in zip(msgs, learn):
        if not on:
            continue
        k = whole.find(m["content"], cursor)
        if k < 0:
            raise RecordError("the chat template does not render an assistant turn's text as it is")
        segs += [(whole[cursor:k], False), (m["content"], True)]
        cursor = k + len(m["content"])
    return segs + [(whole[cursor:], False)]


def chat_segments(tok, msgs: list[dict], learn: list[bool], everything: bool = False) -> Segments:
    """A rendered conversation split into learned and unlearned text (see the module docstring);
    ``everything``: the whole rendering is learned (data.train_on=all)."""
    whole = _render(tok, msgs, gen=False)
    if everything or not any(learn):
        return [(whole, everything)]
    segs: Segments = []
    done = ""
    for i, on in enumerate(learn):
        if not on:
            continue
        try:
            head = _render(tok, msgs[:i], gen=True) if i else ""
        except RecordError:  # a template that cannot render zero messages: nothing before turn 0
            head = ""
        full = whole if i == len(msgs) - 1 else _render(tok, msgs[: i + 1], gen=False)
        if not (head.startswith(done) and full.startswith(head)):
            return _located(whole, msgs, learn)
        segs += [(head[len(done) :], False), (full[len(head) :], True)]
        done = full
    if not whole.startswith(done):
        return _located(whole, msgs, learn)
    return segs + [(whole[len(done) :], False)]


def segments(tok, rec: Any, fmt: str, train_on: str) -> tuple[str, Segments, bool]:
    """(layout, segments, whether the tokenizer's own special tokens open the document) of one record.

    ``fmt``: ``auto`` or one of :data:`FORMATS`. Raises RecordError for a record that does not fit.
    """
    if not isinstance(rec, dict):
        raise RecordError(f"expected a JSON object, got {type(rec).__name__}")
    layout = detect(rec) if fmt == "auto" else fmt
    if layout is None:
        raise RecordError(
            "expected a 'text', 'prompt'/'response', 'messages', 'conversations' (ShareGPT) or "
            f"'instruction'/'output' (Alpaca) record, got keys {sorted(rec)}"
        )
    everything = train_on == "all"
    need = {
        "messages": ("messages",),
        "sharegpt": ("conversations",),
        "alpaca": ("instruction", "output"),
        "prompt_response": ("prompt",),
        "text": ("text",),
    }[layout]
    missing = [k for k in need if k not in rec]
    if layout == "prompt_response" and "response" not in rec and "completion" not in rec:
        missing.append(
            "response"
        )  # {"prompt", "chosen", "rejected"} (preference data) has no answer to learn
    if missing:
        raise RecordError(f"data.format={layout}: the record has no {', '.join(map(repr, missing))}")
    if layout == "text":
        return layout, [(_str(rec, "text"), True)], True
    if layout == "prompt_response":
        answer = "response" if "response" in rec or "completion" not in rec else "completion"
        return layout, [(_str(rec, "prompt"), everything), (_str(rec, answer), True)], True
    msgs, learn = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca}[layout](rec)
    return layout, chat_segments(tok, msgs, learn, everything), False
