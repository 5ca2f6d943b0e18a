"""Plugin functions for tests/models/test_plugins.py (``tests.models.plugin_fixtures:NAME``)."""

from __future__ import annotations

import io
from typing import Any

import torch

from segbatch.models import ModelBundle, Preprocess
from segbatch.models.unet import UNet

CATEGORIES = ["background", "leaf", "stem"]
PREPROCESS = Preprocess(resize=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def unet_module(weights: bytes | None) -> torch.nn.Module:
    torch.manual_seed(3)
    net = UNet(num_classes=3, base_channels=4, depth=2)
    if weights is not None:
        net.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
    return net.eval()


def build_unet(weights: bytes | None) -> ModelBundle:
    """A small U-Net as a plugin bundle (the documented contract)."""
    return ModelBundle(
        module=unet_module(weights),
        task="semantic",
        categories=tuple(CATEGORIES),
        preprocess=PREPROCESS,
        description="test U-Net plugin",
    )


def build_mapping() -> dict[str, Any]:
    """The same as a plain mapping, preprocessing as a dict, no argument."""
    return {
        "module": unet_module(None),
        "task": "semantic",
        "categories": CATEGORIES,
        "preprocess": PREPROCESS.to_dict(),
        "background": "background",
    }


def raises(weights: bytes | None) -> ModelBundle:
    raise RuntimeError("checkpoint server unreachable")


def returns_a_module(weights: bytes | None) -> torch.nn.Module:
    return unet_module(weights)


def wrong_channels(weights: bytes | None) -> dict[str, Any]:
    return {**build_mapping(), "categories": ["background", "b", "c", "d"]}


def missing_keys(weights: bytes | None) -> dict[str, Any]:
    return {"module": unet_module(None), "task": "semantic", "labels": CATEGORIES}


NOT_A_FUNCTION = 5


def build_shapes(weights: bytes | None) -> ModelBundle:
    """A U-Net over segbatch's sample shapes (4 classes, as its mask PNGs), for the end-to-end tests."""
    torch.manual_seed(4)
    net = UNet(num_classes=4, base_channels=4, depth=2).eval()
    return ModelBundle(
        module=net,
        task="semantic",
        categories=("background", "circle", "square", "triangle"),
        preprocess=PREPROCESS,
    )


class _Gathered(torch.nn.Module):
    """Wraps a module so that, in a Ray actor, every forward waits until ``count`` actors have
    each called one (a file per process in ``folder``; at most ``timeout_s`` from the first).
    A job over a few images then cannot end before every actor it started has run some:
    which actors get work stops being a race (the GPU-placement tests count them)."""

    def __init__(self, inner: torch.nn.Module, folder: str, count: int, timeout_s: float = 120.0) -> None:
        super().__init__()
        self.inner, self.folder, self.count, self.timeout_s = inner, folder, count, timeout_s
        self.deadline: float | None = None  # set by the first forward in an actor
        self.open = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import time
        from pathlib import Path

        import ray

        # Only model actors wait: the driver runs one probe forward of a plugin too. An actor
        # runs two calls at once: each waits (not only the first), or the second runs them all.
        if not self.open and ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            folder = Path(self.folder)
            if self.deadline is None:
                self.deadline = time.monotonic() + self.timeout_s
                (folder / str(os.getpid())).touch()
            while len(list(folder.iterdir())) < self.count and time.monotonic() < self.deadline:
                time.sleep(0.05)
            self.open = True
        return self.inner(x)


def build_gathered(weights: bytes | None) -> ModelBundle:
    """:func:`build_shapes` behind a :class:`_Gathered` barrier; ``--weights`` is a JSON file
    ``{"folder": …, "count": …}`` (a plugin's weights reach every actor as bytes)."""
    import json

    if weights is None:
        raise ValueError("build_gathered needs --weights: a JSON file with folder and count")
    spec = json.loads(weights)
    bundle = build_shapes(None)
    return ModelBundle(
        module=_Gathered(bundle.module, spec["folder"], int(spec["count"])),
        task=bundle.task,
        categories=bundle.categories,
        preprocess=bundle.preprocess,
    )
