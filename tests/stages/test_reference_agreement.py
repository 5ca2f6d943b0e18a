"""The job's masks equal the torchvision reference inference, pixel for pixel.

Reference, as a user would write it from torchvision's docs: decode with PIL (EXIF
orientation applied), ``weights.transforms()`` (resize the shorter side, normalize),
forward, then back to the original size — bilinear on the logits, argmax (as detectron2's
``sem_seg_postprocess``). Images are real photographs (scikit-image's bundled ones), one
rotated by its EXIF tag. Models are seeded random networks whose BatchNorm statistics are
calibrated on the photos, so that they predict many classes with thin margins — a harder
test than a trained model, where most pixels are far from a tie.

With torchvision's operators as they are (``channels_last=False, fold_batchnorm=False``)
every pixel is equal. The defaults run other oneDNN kernels (channels-last) on weights with
the BatchNorm folded in, whose sums round differently (as a different thread count does):
the maps then differ only where the reference's top two logits are within 1e-4 of each
other (measured: 1 pixel of 1.05 million, gap 2e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.models import get_model_builder, get_model_weights
from torchvision.transforms.functional import pil_to_tensor

from segbatch import JobConfig
from segbatch.models import get_model_spec
from segbatch.models.registry import ModelOptions
from segbatch.models.unet import bundled_checkpoint
from segbatch.models.weights import load_model, resolve_weights
from segbatch.pipeline import run
from tests.helpers import semantic_maps, skimage_photo

pytestmark = pytest.mark.ray

PHOTOS = {
    "astronaut.jpg": "astronaut.png",
    "coffee.jpg": "coffee.png",
    "rocket.jpg": "rocket.jpg",
    "sub/chelsea_rotated.jpg": "chelsea.png",
    "motorcycle.png": "motorcycle_left.png",
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("photos")
    for name, src in PHOTOS.items():
        img = Image.open(skimage_photo(src)).convert("RGB")
        if name.endswith(".png"):
            img = img.resize((img.width // 3, img.height // 3))  # keep the big one cheap
        path = root / name
        path.parent.mkdir(exist_ok=True)
        if "rotated" in name:
            exif = Image.Exif()
            exif[0x0112] = 8  # displayed rotated 90° counter-clockwise
            img.save(path, quality=90, exif=exif)
        else:
            img.save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
    return str(root)


def reference_logits(path: str, model: torch.nn.Module, transform) -> torch.Tensor:
    """``(C, H, W)``: the logits at the original size; the reference map is their argmax."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    batch = transform(pil_to_tensor(img)).unsqueeze(0)
    with torch.inference_mode():
        logits = model(batch)["out"]
        return F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)[0]


def calibrated_torchvision_model(name: str, photos: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = get_model_builder(name)(weights=None, weights_backbone=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
    model.train()
    crops = [pil_to_tensor(Image.open(skimage_photo(s)).convert("RGB").resize((256, 256))) for s in PHOTOS.values()]
    transform = get_model_weights(name).DEFAULT.transforms()
    with torch.no_grad():
        model(torch.stack([transform(c) for c in crops]))
    return model.eval()


def agreement(out, photos: str, model: torch.nn.Module, transform) -> tuple[float, int, float]:
    """(fraction of equal pixels, most classes in one reference map, largest gap between the
    reference logits of the two classes at a differing pixel)."""
    # The job's actor runs torch on 1 thread; so does the reference, because oneDNN's
    # reduction order depends on the thread count and these seeded models have near-ties.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        maps = semantic_maps(out)
        assert sorted(maps) == sorted(PHOTOS)
        equal = total = classes = 0
        gap = 0.0
        for name, got in maps.items():
            logits = reference_logits(f"{photos}/{name}", model, transform)
            ref = logits.argmax(0).numpy()
            assert got.shape == ref.shape, name
            equal += int((got == ref).sum())
            total += ref.size
            classes = max(classes, len(np.unique(ref)))
            ys, xs = np.nonzero(got != ref)
            if len(ys):
                gap = max(gap, float((logits[ref[ys, xs], ys, xs] - logits[got[ys, xs], ys, xs]).abs().max()))
    finally:
        torch.set_num_threads(threads)
    return equal / total, classes, gap


@pytest.mark.parametrize(
    ("name", "channels_last", "fold"),
    [
        ("lraspp_mobilenet_v3_large", False, False),
        ("lraspp_mobilenet_v3_large", True, True),
        ("deeplabv3_mobilenet_v3_large", True, True),
    ],
)
def test_torchvision_models_match_the_reference(name, channels_last, fold, photos, tmp_path, ray_cluster):
    model = calibrated_torchvision_model(name, photos)
    ckpt = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    summary = run(
        JobConfig(
            input=photos,
            output=str(out),
            model=name,
            weights=str(ckpt),
            batch_size=2,
            channels_last=channels_last,
            fold_batchnorm=fold,
        )
    )
    assert summary.num_errors == 0 and summary.num_images == len(PHOTOS)
    ratio, classes, gap = agreement(out, photos, model, get_model_weights(name).DEFAULT.transforms())
    print(
        f"\n{name} channels_last={channels_last} fold_batchnorm={fold}: "
        f"pixel agreement with the torchvision reference {ratio:.7f} "
        f"({classes} classes in one image; largest top-2 gap where they differ {gap:.1e})"
    )
    assert classes >= 5, "the seeded model must predict many classes for this test to mean anything"
    if channels_last or fold:
        assert ratio > 0.99999 and gap < 1e-4  # rounding of other kernels and weights: near-ties only
    else:
        assert ratio == 1.0


def test_bundled_unet_matches_the_reference(photos, tmp_path, ray_cluster):
    spec = get_model_spec("unet")
    loaded = load_model(spec, resolve_weights(spec, bundled_checkpoint()), ModelOptions())
    pre = loaded.preprocess

    def transform(chw: torch.Tensor) -> torch.Tensor:  # the checkpoint's preprocessing, as torchvision's preset
        from torchvision.transforms._presets import SemanticSegmentation

        return SemanticSegmentation(resize_size=pre.resize, mean=pre.mean, std=pre.std)(chw)

    out = tmp_path / "out"
    run(JobConfig(input=photos, output=str(out), model="unet", batch_size=3))
    ratio, _, gap = agreement(out, photos, loaded.module, transform)
    print(f"\nunet: pixel agreement with the reference {ratio:.7f} (largest top-2 gap where they differ {gap:.1e})")
    assert ratio > 0.99999 and gap < 1e-4  # channels-last, BatchNorm folded (the defaults): near-ties only
