"""Credentials in URLs never reach what a run writes or logs (issue 27, class 1): the masking itself, the
log filter on every handler, provenance's command line, and the probe's Authorization header."""

from __future__ import annotations

import base64
import logging
import sys

from trainer.runtime import dist, logs
from trainer.runtime.redact import basic_auth, redact, redact_obj
from trainer.training.observe import provenance


def test_passwords_tokens_and_signed_query_values_are_masked_and_the_user_kept():
    assert redact("http://alice:s3cret@host:5000/x") == "http://alice:***@host:5000/x"
    assert (
        redact("uri https://ghp_TOKEN123@github.com/o/r.git end") == "uri https://***@github.com/o/r.git end"
    )
    assert redact("s3://b/k?X-Amz-Signature=abc123&x=1") == "s3://b/k?X-Amz-Signature=***&x=1"
    assert redact("http://host:5000/api?token=t0k&page=2") == "http://host:5000/api?token=***&page=2"
    assert redact("no urls here: a=b") == "no urls here: a=b"
    assert redact_obj({"a": ["http://u:p@h"], "n": 3}) == {"a": ["http://u:***@h"], "n": 3}


def test_basic_auth_strips_the_userinfo_into_a_header():
    url, header = basic_auth("http://al%40ce:p%3Aw@127.0.0.1:5000/health")
    assert url == "http://127.0.0.1:5000/health"
    assert base64.b64decode(header.split()[1]).decode() == "al@ce:p:w"
    assert basic_auth("http://127.0.0.1:5000/health") == ("http://127.0.0.1:5000/health", None)


def test_console_and_rank_log_mask_urls_in_messages_and_tracebacks(tmp_path, capsys):
    logs.setup_logging(0)
    logs.add_rank_log(str(tmp_path), 0, 1)
    log = logging.getLogger("trainer")
    try:
        log.warning("mlflow: cannot reach %s", "http://bob:hunter2@10.0.0.1:5000")
        try:
            raise ConnectionError("refused by https://bob:hunter2@10.0.0.1/api")
        except ConnectionError:
            log.error("internal error", exc_info=True)
    finally:
        root = logging.getLogger()
        for h in list(root.handlers):
            if isinstance(h, logging.FileHandler):
                root.removeHandler(h)
                h.close()
    err = capsys.readouterr().err
    text = (tmp_path / "logs" / "rank-0.log").read_text()
    for out in (err, text):
        assert "hunter2" not in out
        assert "http://bob:***@10.0.0.1:5000" in out and "https://bob:***@10.0.0.1/api" in out


def test_provenance_command_line_is_masked(monkeypatch):
    argv = [sys.executable, "-m", "trainer", "train", "checkpoint.dir=s3://b/p", "x=http://u:pw123@h/"]
    monkeypatch.setattr(sys, "orig_argv", argv, raising=False)
    prov = provenance.collect(dist.DistState())
    assert "pw123" not in prov["command"] and "http://u:***@h/" in prov["command"]
