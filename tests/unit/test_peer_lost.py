"""Which backend errors mean "a peer went away" (exit 76, retry resumes) and which stay bugs (exit 1)."""

import pytest

from trainer.runtime.dist import backend_line, is_peer_lost

GLOO = "[gloo/transport/tcp/pair.cc:534] Read error [127.0.0.1]:41234: Connection reset by peer"
NCCL = (
    "NCCL error in: ../torch/csrc/distributed/c10d/NCCLUtils.hpp:268, remote process exited or there was a "
    "network error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a "
    "remote process exiting prematurely."
)


@pytest.mark.parametrize(
    "text",
    [GLOO, "Connection closed by peer [10.0.0.2]:5000", NCCL, "NCCL communicator was aborted on rank 3."],
)
def test_a_vanished_peer_is_recognised(text):
    assert is_peer_lost(RuntimeError(text))


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("NCCL error: unhandled cuda error (run with NCCL_DEBUG=INFO for details)"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x8)"),
        ValueError("Connection reset by peer"),  # not from a collective
    ],
)
def test_other_errors_stay_what_they_are(error):
    assert not is_peer_lost(error)


def test_the_backend_line_is_the_one_that_says_what_happened():
    assert backend_line(RuntimeError(NCCL)).startswith("ncclRemoteError: A call failed")
    assert backend_line(RuntimeError("traceback noise\n" + GLOO)).endswith("Connection reset by peer")
