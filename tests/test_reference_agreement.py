"""The job's masks equal the torchvision reference inference, pixel for pixel.

Reference, as a user would write it from torchvision's docs: decode with PIL (EXIF
orientation applied), ``weights.transforms()`` (resize the shorter side, normalize),
forward, then back to the original size — bilinear on the logits, argmax (as detectron2's
``sem_seg_postprocess``). Images are real photographs (scikit-image's bundled ones), one
rotated by its EXIF tag. Models are seeded random networks whose BatchNorm statistics are
calibrated on the photos, so that they predict many classes with thin margins — a harder
test than a trained model, where most pixels are far from a tie.
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
from segbatch.models.unet import bundled_checkpoint
from segbatch.models.weights import load_model, resolve_weights
from segbatch.models.registry import ModelOptions
from segbatch.pipeline import run
from tests.helpers import semantic_maps, skimage_photo

pytestmark = pytest.mark.ray

PHOTOS = {"astronaut.jpg": "astronaut.png", "coffee.jpg": "coffee.png", "rocket.jpg": "rocket.jpg",
          "sub/chelsea_rotated.jpg": "chelsea.png", "motorcycle.png": "motorcycle_left.png"}


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


def reference_map(path: str, model: torch.nn.Module, transform) -> np.ndarray:
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    batch = transform(pil_to_tensor(img)).unsqueeze(0)
    with torch.inference_mode():
        logits = model(batch)["out"]
        up = F.interpolate(logits, size=(img.height, img.width), mode="bilinear", align_corners=False)
    return up.argmax(1)[0].numpy()


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


def agreement(out, photos: str, model: torch.nn.Module, transform) -> tuple[float, int]:
    # The job's actor runs torch on 1 thread; so does the reference, because oneDNN's
    # reduction order depends on the thread count and these seeded models have near-ties.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        maps = semantic_maps(out)
        assert sorted(maps) == sorted(PHOTOS)
        equal = total = classes = 0
        for name, got in maps.items():
            ref = reference_map(f"{photos}/{name}", model, transform)
            assert got.shape == ref.shape, name
            equal += int((got == ref).sum())
            total += ref.size
            classes = max(classes, len(np.unique(ref)))
    finally:
        torch.set_num_threads(threads)
    return equal / total, classes


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_torchvision_models_match_the_reference(name, photos, tmp_path, ray_cluster):
    model = calibrated_torchvision_model(name, photos)
    ckpt = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    summary = run(JobConfig(input=photos, output=str(out), model=name, weights=str(ckpt), batch_size=2))
    assert summary.num_errors == 0 and summary.num_images == len(PHOTOS)
    ratio, classes = agreement(out, photos, model, get_model_weights(name).DEFAULT.transforms())
    print(f"\n{name}: pixel agreement with the torchvision reference {ratio:.6f} ({classes} classes in one image)")
    assert classes >= 5, "the seeded model must predict many classes for this test to mean anything"
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
    ratio, _ = agreement(out, photos, loaded.module, transform)
    print(f"\nunet: pixel agreement with the reference {ratio:.6f}")
    assert ratio == 1.0
