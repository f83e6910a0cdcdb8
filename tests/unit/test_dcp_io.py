"""DCP checkpoints are read without trusting pickle: planted .metadata or byte items never run code."""

import os
import pickle

import pytest
import torch
import torch.distributed.checkpoint as dcp

from trainer.checkpoint import dcp_io


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def saved(tmp_path):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(m, opt)
    path = str(tmp_path / "dcp")
    dcp_io.save({"model": msd, "optim": osd}, path)
    return m, path


def test_roundtrip_and_consolidate(tmp_path):
    m, path = saved(tmp_path)
    full = dcp_io.consolidate(path)
    assert torch.equal(full["model"]["weight"], m.weight.detach())
    target = {"model": {k: torch.zeros_like(v) for k, v in m.state_dict().items()}}
    dcp_io.load(target, path)
    assert torch.equal(target["model"]["bias"], m.bias.detach())


def test_planted_metadata_is_refused_without_running_code(tmp_path):
    _, path = saved(tmp_path)
    marker = tmp_path / "pwned"
    with open(os.path.join(path, ".metadata"), "wb") as fh:
        pickle.dump(Payload(str(marker)), fh)
    with pytest.raises(dcp_io.DCPError, match="not a DCP metadata class"):
        dcp_io.consolidate(path)
    with pytest.raises(dcp_io.DCPError, match="not a DCP metadata class"):
        dcp_io.load({"model": {"weight": torch.zeros(3, 4)}}, path)
    assert not marker.exists()


def test_plain_dcp_reader_would_have_run_it(tmp_path):
    """The reason this module exists: the stock reader executes the planted payload."""
    _, path = saved(tmp_path)
    marker = tmp_path / "pwned"
    with open(os.path.join(path, ".metadata"), "wb") as fh:
        pickle.dump(Payload(str(marker)), fh)
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException):  # it fails afterwards, but the code already ran
        dcp.load({"model": {"weight": torch.zeros(3, 4)}}, checkpoint_id=path)
    assert marker.exists()
