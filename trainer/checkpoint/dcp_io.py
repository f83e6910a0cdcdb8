"""torch.distributed.checkpoint (DCP) for sharded (FSDP) state, read without trusting pickle.

DCP's FileSystemReader unpickles its `.metadata` file with plain `pickle.load`, and its default load
planner reads non-tensor items with `torch.load(weights_only=False)`: a planted file runs code at load
time (../shared/PLATFORM.md). Here the metadata goes through an unpickler that accepts only DCP's own
metadata classes and a few inert torch/builtin types, and byte items through `weights_only=True`.

URLs (``s3://...``, stores.py) go through DCP's fsspec writer and reader (private in torch 2.13:
``torch.distributed.checkpoint._fsspec_filesystem``), with the same safe metadata read, and
``sync_files=False``: on an object store a PUT is durable when it returns, and sync_files would
``os.sync()`` the whole host once per file.
"""

from __future__ import annotations

import io
import os
import pickle

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from . import stores

_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class UnsafeCheckpoint(pickle.UnpicklingError):
    pass


class DCPError(RuntimeError):
    """DCP's CheckpointException derives from BaseException; this makes failures ordinary errors."""


def _reraise(e: BaseException):
    text = str(e)
    reason = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), text)
    raise DCPError(f"DCP checkpoint unreadable: {reason[:400]}") from None


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise UnsafeCheckpoint(f"DCP metadata refers to {module}.{name}, which is not a DCP metadata class")


def read_metadata_safely(path: str) -> Metadata:
    if stores.is_url(path):
        fh = stores.read_stream(stores.join(path, ".metadata"))
    else:
        fh = open(os.path.join(path, ".metadata"), "rb")  # noqa: SIM115 - closed below
    with fh:
        meta = _MetadataUnpickler(fh).load()
    if not isinstance(meta, Metadata):
        raise UnsafeCheckpoint(f"{path}/.metadata does not hold DCP Metadata")
    return meta


class _SafeMetadata:
    """read_metadata through the restricted unpickler, for both readers below."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        meta = read_metadata_safely(str(self.path))
        if getattr(meta, "storage_meta", None) is None:
            meta.storage_meta = StorageMeta()
        meta.storage_meta.load_id = self.load_id
        return meta


class SafeReader(_SafeMetadata, FileSystemReader):
    pass


class SafeFsspecReader(_SafeMetadata, FsspecReader):
    pass


def _options(path: str) -> dict:
    return stores.storage_options(path.split("://", 1)[0])


def _reader(path: str):
    path = str(path)
    return SafeFsspecReader(path, **_options(path)) if stores.is_url(path) else SafeReader(path)


class SafeLoadPlanner(DefaultLoadPlanner):
    """Non-tensor items (optimizer hyper-parameters, steps) through weights_only=True."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


def save(state: dict, path: str, process_group=None) -> None:
    path = str(path)
    if stores.is_url(path):
        writer = FsspecWriter(path, sync_files=False, **_options(path))
    else:
        writer = FileSystemWriter(path, sync_files=True)
    dcp.save(state, storage_writer=writer, process_group=process_group)


def load(state: dict, path: str, process_group=None) -> None:
    """Load into `state` in place (resharding to the current layout as DCP does)."""
    try:
        dcp.load(state, storage_reader=_reader(path), planner=SafeLoadPlanner(), process_group=process_group)
    except CheckpointException as e:
        _reraise(e)


def consolidate(path: str) -> dict:
    """A DCP directory -> one nested dict of full tensors, in this process (no process group)."""

    class _Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item, value):
            self.state_dict[read_item.dest_index.fqn] = torch.load(value, weights_only=True)

    out: dict = {}
    try:
        _load_state_dict(out, storage_reader=_reader(path), planner=_Planner(), no_dist=True)
    except CheckpointException as e:
        _reraise(e)
    return out
