"""Exit codes of `python -m trainer` (and, through the launcher, of the whole job).

They are part of the contract with Docker and Kubernetes: restart policies key on them (see README
"When things go wrong"). 75 is EX_TEMPFAIL from sysexits.h: "try again later".
"""

OK = 0
INTERNAL = 1  # a bug or an unexpected exception: do not blindly retry
CONFIG = 2  # bad config, bad input file, bad CLI usage: retrying cannot help
NONFINITE = 3  # loss stayed non-finite for more than train.max_bad_steps steps; last good state saved
HANG = 4  # a collective or the rendezvous timed out; stalled ranks named in the log
PREEMPTED = 75  # SIGTERM/SIGINT: checkpoint saved, a retry resumes from it

NAMES = {OK: "ok", INTERNAL: "internal error", CONFIG: "config error", NONFINITE: "non-finite loss",
         HANG: "hang / timeout", PREEMPTED: "preempted (checkpoint saved)"}
