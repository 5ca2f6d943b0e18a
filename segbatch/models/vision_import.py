"""Import torchvision without importing ``torch._dynamo`` (the compiler) with it.

``torchvision.ops.roi_align`` runs ``from torch._dynamo.utils import is_compile_supported`` at
import time, and importing torchvision imports every op: that one line loads the whole of
``torch._dynamo`` (~1.2 s of CPU on this project's 2-core machine, most of torchvision's
1.3–1.6 s). The function is only called when torchvision's compiled C++ ops are missing (then
``roi_align`` falls back to a compiled Python version); segbatch never compiles. Every model
actor imports torchvision while the job waits for its first batch, so this is start-up each
run pays (bench/README.md "Actor start-up without torch._dynamo").

:func:`import_torchvision` puts a one-function stand-in for ``torch._dynamo.utils`` in
``sys.modules`` for the duration of the import only: its ``is_compile_supported`` imports the
real one on first call. Afterwards the stand-in is gone from ``sys.modules``, so anything that
later imports ``torch._dynamo`` (``torch.compile``, a user's plugin) gets the real package. A
torchvision that needs more of ``torch._dynamo`` at import time (the stand-in raises
ImportError) is imported again the ordinary way.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_UTILS = "torch._dynamo.utils"


def _is_compile_supported(device_type: Any) -> Any:
    """``torch._dynamo.utils.is_compile_supported``, imported when first asked."""
    from torch._dynamo.utils import is_compile_supported

    return is_compile_supported(device_type)


def import_torchvision(name: str = "torchvision") -> types.ModuleType:
    """``import torchvision`` (``name``: the package, another only in tests), with
    ``torch._dynamo`` left unimported where the package allows it; returns the package."""
    if name in sys.modules or "torch._dynamo" in sys.modules:
        return importlib.import_module(name)  # nothing to save: it (or the compiler) is loaded
    import torch  # noqa: F401  # the stand-in's parent package must exist first

    stand_in = types.ModuleType(_UTILS, "import-time stand-in (segbatch.models.vision_import)")
    stand_in.is_compile_supported = _is_compile_supported  # type: ignore[attr-defined]
    sys.modules[_UTILS] = stand_in
    try:
        module = importlib.import_module(name)
    except ImportError:
        # It needs more than the stand-in has: forget the half-done import, import it plainly.
        _forget(name)
        _forget("torch._dynamo")  # the stand-in (torch._dynamo.utils) with it
        return importlib.import_module(name)
    finally:
        if sys.modules.get(_UTILS) is stand_in:
            del sys.modules[_UTILS]
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None and getattr(dynamo, "utils", None) is stand_in:
        # The compiler itself was imported meanwhile and bound the stand-in: give it the real one.
        dynamo.utils = importlib.import_module(_UTILS)  # type: ignore[attr-defined]
    return module


def _forget(package: str) -> None:
    """Drop ``package`` and its submodules from ``sys.modules``."""
    for module in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[module]
