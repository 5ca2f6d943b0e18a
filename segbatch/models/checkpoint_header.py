"""What a ``torch.save`` checkpoint holds, read without torch: its keys, plain values and the
shapes of its tensors (no tensor data).

The driver plans a built-in model's job from its checkpoint — a segbatch checkpoint of which
model, with which categories; or a plain state_dict, its class count from the head's shape —
and importing torch for that costs it ~2 s of CPU that a small machine's Ray start needs.
Only the zip format ``torch.save`` writes (since torch 1.6) is read, with a pickle
``Unpickler`` whose globals are the plain containers and stand-ins below (the "restricting
globals" pattern of the :mod:`pickle` docs): nothing from the file is run. Anything else — the
legacy format, another global, a broken file — gives None, and the caller reads the file with
``torch.load(weights_only=True)`` as before.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TensorShape:
    """A tensor of the checkpoint, as its shape alone."""

    shape: tuple[int, ...]


class _Storage:
    """Stand-in for a tensor's storage (its dtype class and its data file are not needed)."""


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> TensorShape:
    return TensorShape(tuple(int(n) for n in size))


class _HeaderUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name.endswith("Storage"):
            return _Storage
        raise pickle.UnpicklingError(f"not read without torch: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage class, key, location, numel): the tensor's data, not read here.
        if isinstance(pid, tuple) and pid and pid[0] == "storage":
            return _Storage()
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def read_checkpoint(data: bytes) -> Any | None:
    """The object ``torch.load`` would return, tensors as :class:`TensorShape`; None when the
    file cannot be read this way (the caller uses ``torch.load(weights_only=True)``)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1:
                return None
            payload = archive.read(pickles[0])
        return _HeaderUnpickler(io.BytesIO(payload)).load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OSError):  # fmt: skip
        return None
