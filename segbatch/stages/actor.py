"""The model actor as Ray runs it: :class:`~segbatch.stages.predict.Predictor` on the device Ray
assigned, its model fetched once from the object store."""

from __future__ import annotations

import os
from typing import Any

import ray

from segbatch.stages.predict import Predictor, pick_device


class RayPredictor(Predictor):
    """:class:`Predictor` fed from the object store, on the GPU Ray assigned (if any)."""

    def __init__(self, model_holder: list[Any], announce: bool = False, **kwargs: Any) -> None:
        # The ObjectRef travels inside a list so that Ray does not resolve it at
        # construction; the actor fetches the model's bytes (a ResolvedModel) once, here.
        gpu_ids = ray.get_gpu_ids()
        device = pick_device(gpu_ids)
        ctx = ray.get_runtime_context()
        worker = (
            f"node={ctx.get_node_id()[:12]} pid={os.getpid()} device={device} gpus={','.join(str(g) for g in gpu_ids)}"
        )
        super().__init__(model=lambda: ray.get(model_holder[0]), device=device, worker=worker, **kwargs)
        if announce:  # --verbose: Ray forwards actor output to the driver, one line per actor
            print(f"segbatch: model actor ready: {worker}", flush=True)
