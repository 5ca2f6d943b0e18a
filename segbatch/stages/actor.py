"""The model actor as Ray runs it: :class:`~segbatch.stages.predict.Predictor` on the device Ray
assigned, its model fetched once from the object store."""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from segbatch.stages.predict import Predictor, pick_device


def placement() -> tuple[torch.device, str]:
    """This actor's device (the GPU Ray assigned, else the CPU) and where it runs, in words:
    ``node=… pid=… device=… gpus=…`` (images.parquet ``worker``, the ``--verbose`` lines)."""
    gpu_ids = ray.get_gpu_ids()
    device = pick_device(gpu_ids)
    node = ray.get_runtime_context().get_node_id()[:12]
    return device, f"node={node} pid={os.getpid()} device={device} gpus={','.join(str(g) for g in gpu_ids)}"


class RayPredictor(Predictor):
    """:class:`Predictor` fed from the object store, on the GPU Ray assigned (if any)."""

    def __init__(self, model_holder: list[Any], announce: bool = False, **kwargs: Any) -> None:
        # The ObjectRef travels inside a list so that Ray does not resolve it at
        # construction; the actor fetches the model's bytes (a ResolvedModel) once, here.
        device, worker = placement()
        super().__init__(model=lambda: ray.get(model_holder[0]), device=device, worker=worker, **kwargs)
        if announce:  # --verbose: Ray forwards actor output to the driver, one line per actor
            print(f"segbatch: model actor ready: {worker}", flush=True)
