"""Checkpoints: everything that writes, finds, verifies and reads them, and nothing that decides when.

    layout.py       the format's names and records (file names, ``Progress``, ``CheckpointError``, versions)
    transaction.py  ``CheckpointDir``: write under a temporary name, fsync, checksum, rename, move ``latest``;
                    retention; ``resolve`` a path to a committed checkpoint
    read.py         read and verify (checksums before unpickling, ``weights_only``)
    stores.py       where they live: a local directory or an fsspec URL (``s3://``), retried
    dcp_io.py       sharded (FSDP) state through torch.distributed.checkpoint (imported only when needed)
    weights.py      model weights from any file a user hands us; the one safetensors writer
    hf_export.py    the ``hf/`` and ``adapter/`` directories a finished run writes
    mirror.py       the run's files (metrics, logs) copied beside remote checkpoints

The names below are the API the trainer and the tools use; ``weights``, ``hf_export``, ``dcp_io``, ``mirror``
and ``stores`` are imported as modules (``from trainer.checkpoint import weights``): they pull in
safetensors, transformers or torch.distributed.checkpoint, which a plain save does not need. When to save
is the loop's business (``trainer.training.checkpointer``); this package never imports ``trainer.training``.
"""

from .layout import (
    DCP,
    FORMAT,
    LATEST,
    MANIFEST,
    STATE,
    CheckpointError,
    Progress,
    checkpoint_root,
    data_file,
    file_checksum,
    sha256_file,
    step_name,
    versions,
)
from .read import (
    consolidated_model_state,
    is_sharded,
    load_rank_data,
    load_state,
    ranked_by_monitor,
    read_manifest,
    verify,
)
from .transaction import (
    CheckpointDir,
    atomic_torch_save,
    atomic_write_text,
    resolve,
    resolve_best,
    rng_state,
    set_rng_state,
)

__all__ = [
    "DCP",
    "FORMAT",
    "LATEST",
    "MANIFEST",
    "STATE",
    "CheckpointDir",
    "CheckpointError",
    "Progress",
    "atomic_torch_save",
    "atomic_write_text",
    "checkpoint_root",
    "consolidated_model_state",
    "data_file",
    "is_sharded",
    "load_rank_data",
    "load_state",
    "ranked_by_monitor",
    "read_manifest",
    "resolve",
    "resolve_best",
    "rng_state",
    "set_rng_state",
    "file_checksum",
    "sha256_file",
    "step_name",
    "verify",
    "versions",
]
