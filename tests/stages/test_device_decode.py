"""``--decode device``: JPEG bytes travel, the model actor decodes and resizes them (here with
torchvision's CPU decoder, the path a CPU actor runs). Its inputs and class maps must equal the
host path's pixel for pixel, and every bad file must end as the same error row."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from segbatch import JobConfig, JobError
from segbatch.io.images import jpeg_header
from segbatch.models.preprocess import Preprocess
from segbatch.models.resolve import resolve_model
from segbatch.models.unet import DEMO_PREPROCESS
from segbatch.stages.device_decode import decode_resize, orient
from segbatch.stages.predict import Predictor
from segbatch.stages.read import read_batch
from tests.helpers import read_outputs, skimage_photo

CPU = torch.device("cpu")


def _photo() -> Image.Image:
    """A real photograph, 451×300 (not square, so a wrong transpose shows)."""
    return Image.open(skimage_photo("chelsea.png")).convert("RGB")


def _jpeg(img: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


# The transpose that makes a picture stored this way show upright under EXIF orientation k.
_STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def good_files() -> dict[str, tuple[bytes, bool]]:
    """name → (bytes, whether it travels as bytes under --decode device)."""
    img = _photo()
    files = {
        "baseline_420.jpg": (_jpeg(img, quality=90), True),
        "progressive.jpg": (_jpeg(img, quality=90, progressive=True), True),
        "subsampling_444.jpg": (_jpeg(img, quality=90, subsampling=0), True),
        "subsampling_422.jpg": (_jpeg(img, quality=90, subsampling=1), True),
        "gray.jpg": (_jpeg(img.convert("L"), quality=90), True),
        "odd_size.jpg": (_jpeg(img.crop((3, 5, 336, 256)), quality=75), True),
        # Pillow inverts Adobe CMYK JPEGs: the host path converts them.
        "cmyk.jpg": (_jpeg(img.convert("CMYK"), quality=90), False),
        "photo.png": (_png(img), False),
    }
    for k, how in _STORED.items():
        files[f"exif_{k}.jpg"] = (_jpeg(img.transpose(how), quality=90, exif=_exif(k)), True)
    return files


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bad_files() -> dict[str, bytes]:
    jpeg = _jpeg(_photo(), quality=90)
    header = bytearray(jpeg)
    header[2:40] = b"\xff" * 38
    return {
        "empty.jpg": b"",
        "notes.jpg": b"not a picture",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        # Cut short but ending in an EOI marker: it passes the header check, and the decoder in
        # the actor rejects it; Pillow rejects it too.
        "cut_with_eoi.jpg": jpeg[:300] + b"\xff\xd9",
        "bad_header.jpg": bytes(header),
        "blank.jpg": _jpeg(Image.new("RGB", (64, 48), (90, 90, 90))),
        "blank_gray.jpg": _jpeg(Image.new("L", (64, 48), 7)),
    }


def _write(folder: Path, files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """Write the files; returns a manifest batch of them (``uri`` column)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    names = sorted(files)
    return {"uri": np.array([str(folder / n) for n in names], dtype=object), "file_name": np.array(names, dtype=object)}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_as_exif_transpose(orientation):
    img = _photo().crop((0, 0, 7, 5))
    tagged = Image.open(io.BytesIO(_png_with_exif(img, orientation)))
    want = np.asarray(ImageOps.exif_transpose(tagged).convert("RGB"))
    got = orient(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


def test_orient_refuses_an_orientation_outside_exif():
    with pytest.raises(ValueError, match=r"EXIF orientation must be 1\.\.8, got 9"):
        orient(torch.zeros(3, 2, 2, dtype=torch.uint8), 9)


def _png_with_exif(img: Image.Image, orientation: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", exif=_exif(orientation))
    return buf.getvalue()


@pytest.mark.parametrize("preprocess", [DEMO_PREPROCESS, Preprocess(resize=96, crop=(80, 80))], ids=["unet", "crop"])
def test_model_input_equals_the_host_path_pixel_for_pixel(tmp_path, preprocess):
    files = good_files()
    batch = _write(tmp_path, {n: d for n, (d, _) in files.items()})
    host = read_batch(batch, preprocess, decode_mode="host")
    device = read_batch(batch, preprocess, decode_mode="device")
    names = list(batch["file_name"])
    travels = [files[n][1] for n in names]
    assert [e is not None for e in device["encoded"]] == travels
    assert list(device["status"]) == list(host["status"]) == ["ok"] * len(names)
    # Sizes (after EXIF) and the conversion note come from the header, as the host path reports them.
    for col in ("height", "width", "conversion"):
        assert list(device[col]) == list(host[col]), col
    rows = [i for i, t in enumerate(travels) if t]
    decoded = decode_resize([device["encoded"][i] for i in rows], [device["orientation"][i] for i in rows],
                            preprocess, CPU)  # fmt: skip
    for i, image in zip(rows, decoded, strict=True):
        assert isinstance(image, torch.Tensor), names[i]
        assert np.array_equal(image.numpy(), host["image"][i]), names[i]


@pytest.fixture(scope="module")
def unet() -> Predictor:
    return Predictor(model=resolve_model("unet"))


def test_class_maps_and_error_rows_equal_the_host_path(tmp_path, unet):
    files = {**{n: d for n, (d, _) in good_files().items()}, **bad_files()}
    batch = _write(tmp_path, files)
    host = unet(read_batch(batch, unet.preprocess, decode_mode="host"))
    device = unet(read_batch(batch, unet.preprocess, decode_mode="device"))
    names = list(batch["file_name"])
    errors = {n: e for n, s, e in zip(names, host["status"], host["error"], strict=True) if s == "error"}
    assert sorted(errors) == sorted(bad_files())  # each bad file is an error row, every good one is not
    assert errors["blank.jpg"].startswith("decode: blank image: every pixel is 90")
    assert errors["cut_with_eoi.jpg"].startswith("decode: ")
    for col in ("status", "error", "height", "width", "conversion"):
        assert list(device[col]) == list(host[col]), col
    for i, name in enumerate(names):
        assert np.array_equal(device["label_map"][i], host["label_map"][i]), name
        assert np.array_equal(device["top_prob"][i], host["top_prob"][i]), name
    assert "encoded" not in device and "orientation" not in device and "image" not in device
    assert np.all(device["t_read"] > 0)


def test_an_image_too_large_to_decode_safely_is_the_same_error_row(tmp_path, unet, monkeypatch):
    """The pixel limit (--max-image-pixels, Pillow's bomb guard), checked from the header: the
    host path reports it."""
    batch = _write(tmp_path, {"big.jpg": _jpeg(_photo(), quality=90)})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    assert jpeg_header((tmp_path / "big.jpg").read_bytes()) is None
    host = unet(read_batch(batch, unet.preprocess, max_image_pixels=20_000, decode_mode="host"))
    device = unet(read_batch(batch, unet.preprocess, max_image_pixels=20_000, decode_mode="device"))
    assert host["error"][0].startswith("decode: image too large to decode safely")
    assert device["error"][0] == host["error"][0]


def test_models_with_other_resize_filters_get_host_decoded_images(tmp_path):
    batch = _write(tmp_path, {"a.jpg": _jpeg(_photo(), quality=90)})
    out = read_batch(batch, Preprocess(resize=64, resample="pillow-bilinear"), decode_mode="device")
    assert out["encoded"][0] is None and out["image"][0].shape == (3, 64, 96)


def test_a_bad_decode_mode_is_refused_naming_it(tmp_path):
    with pytest.raises(JobError, match="decode must be one of host, device, auto, got 'gpu'"):
        JobConfig(input=str(tmp_path), output=str(tmp_path / "out"), model="unet", decode="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decode_mode must be 'host' or 'device' here, got 'auto'"):
        read_batch({"uri": np.array([], dtype=object)}, DEMO_PREPROCESS, decode_mode="auto")


@pytest.mark.ray
def test_a_run_with_decode_device_writes_what_decode_host_writes(tmp_path, ray_cluster):
    from segbatch.pipeline import run

    files = {**{n: d for n, (d, _) in good_files().items()}, **bad_files()}
    _write(tmp_path / "images", files)
    outputs = {}
    for mode in ("host", "device"):
        out = tmp_path / mode
        run(JobConfig(input=str(tmp_path / "images"), output=str(out), model="unet", batch_size=4, decode=mode))
        outputs[mode] = read_outputs(out)
    host, device = outputs["host"], outputs["device"]
    assert host["job"]["layout"]["decode"] == "host" and device["job"]["layout"]["decode"] == "device"
    drop = ("t_read", "t_predict", "t_encode", "worker")

    def rows(o):
        return sorted(({k: v for k, v in r.items() if k not in drop} for r in o["images"]), key=lambda r: r["image_id"])

    assert rows(device) == rows(host)
    assert sum(r["status"] == "error" for r in rows(host)) == len(bad_files())
    assert sorted(device["masks"], key=lambda m: (m["image_id"], m["category_id"])) == sorted(
        host["masks"], key=lambda m: (m["image_id"], m["category_id"])
    )
    assert device["coco"]["annotations"] == host["coco"]["annotations"]


def test_the_blank_checks_extremes_read_any_memory_layout():
    from segbatch.stages.device_decode import _extremes

    g = torch.Generator().manual_seed(0)
    hwc = torch.randint(3, 250, (48, 64, 3), dtype=torch.uint8, generator=g)
    hwc[7, 9, 1], hwc[40, 2, 2] = 0, 255
    chw = hwc.permute(2, 0, 1)  # a decoded JPEG: CHW view of HWC memory
    for image in (chw, chw.contiguous(), chw[:, ::2, 1:], chw.flip(2), chw[:1]):
        assert _extremes(image).tolist() == [int(image.min()), int(image.max())]
