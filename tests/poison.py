"""Fault injection for tests/test_e2e_poison.py: a model worker that dies on a "poison" image.

A real image that crashes native code on demand cannot be made here, so this stands in for
one: installed into every Ray worker of a job through ``runtime_env``'s
``worker_process_setup_hook``, it makes :meth:`segbatch.stages.predict.Predictor._run` SIGKILL its
own process — as a segfault in a decoder or a CUDA kernel would — whenever its images include
one whose file name contains ``poison``. Everything else is the real code path.
"""

from __future__ import annotations

import os
import signal
from typing import Any


def install() -> None:
    from segbatch.stages import predict

    original = predict.Predictor._run

    def _run(self: Any, batch: dict[str, Any], idx: list[int]) -> list[Any]:
        if any("poison" in str(batch["file_name"][i]) for i in idx):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, batch, idx)

    predict.Predictor._run = _run  # type: ignore[method-assign]
