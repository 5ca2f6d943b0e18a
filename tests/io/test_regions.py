"""Region reads of large images equal the same region of the full decode, and read only what they need."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from segbatch.errors import ImageError
from segbatch.io.images import decode
from segbatch.io.regions import RegionReader, image_size, pillow_pixel_limit, read_region
from tests.helpers import skimage_photo


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def photo(shape: tuple[int, int]) -> np.ndarray:
    """A real photograph cropped to ``shape`` (JPEG-compressed tiles need real content to mean anything)."""
    rgb = np.asarray(Image.open(skimage_photo("astronaut.png")).convert("RGB"))
    return np.ascontiguousarray(rgb[: shape[0], : shape[1]])


def regions(height: int, width: int, n: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Random regions, plus the whole image and the four corners (edge tiles are partial)."""
    rng = np.random.default_rng(seed)
    out = [(0, 0, height, width), (0, 0, 1, 1), (height - 1, width - 1, 1, 1), (0, width - 7, 5, 7)]
    out.append((height - 9, 0, 9, 11))
    for _ in range(n):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        out.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
    return out


RNG = np.random.default_rng(0)
GRAY16 = (RNG.integers(0, 2000, (173, 211)) + 700).astype(np.uint16)
CASES = {
    "tiled-deflate-rgb": (photo((300, 451)), {"tile": (64, 128), "compression": "zlib", "photometric": "rgb"}),
    "tiled-jpeg-ycbcr": (photo((300, 451)), {"tile": (64, 64), "compression": "jpeg", "photometric": "ycbcr"}),
    "striped-lzw-predictor": (
        photo((257, 190)),
        {"rowsperstrip": 7, "compression": "lzw", "predictor": True, "photometric": "rgb"},
    ),
    "striped-one-strip": (photo((40, 50)), {"photometric": "rgb"}),
    "bigtiff-tiled": (photo((100, 130)), {"bigtiff": True, "tile": (32, 48), "photometric": "rgb"}),
    "gray8-tiled": (photo((100, 130))[..., 1], {"tile": (16, 32), "photometric": "minisblack"}),
    "gray16-tiled": (GRAY16, {"tile": (32, 48), "compression": "zlib", "photometric": "minisblack"}),
    "gray16-striped": (GRAY16, {"rowsperstrip": 9, "photometric": "minisblack"}),
    "rgba8": (np.dstack([photo((60, 70)), RNG.integers(0, 255, (60, 70), dtype=np.uint8)]), {"photometric": "rgb"}),
    "rgb16": (RNG.integers(0, 65535, (60, 70, 3), dtype=np.uint16), {"tile": (16, 16), "photometric": "rgb"}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tiff_regions_equal_the_full_decode(case):
    array, kwargs = CASES[case]
    data = tiff_bytes(array, **kwargs)
    modes = ("range", "percentile", "full") if array.dtype == np.uint16 and array.ndim == 2 else ("range",)
    for mode in modes:
        full = decode(data, mode).rgb  # segbatch's decode of the whole file (Pillow)
        with RegionReader(data, high_bit_depth=mode) as reader:
            assert reader.by_region, case
            assert (reader.height, reader.width) == full.shape[:2]
            for y0, x0, h, w in regions(*full.shape[:2], 25, seed=len(case)):
                got = reader.read(y0, x0, h, w)
                assert got.dtype == np.uint8 and got.shape == (h, w, 3)
                assert np.array_equal(got, full[y0 : y0 + h, x0 : x0 + w]), (case, mode, y0, x0, h, w)
    assert image_size(data) == full.shape[:2]


def test_sources_may_be_bytes_a_path_or_an_open_file(tmp_path):
    array, kwargs = CASES["tiled-deflate-rgb"]
    data = tiff_bytes(array, **kwargs)
    path = tmp_path / "big.tif"
    path.write_bytes(data)
    expected = array[50:120, 200:333]
    assert np.array_equal(read_region(data, 50, 200, 70, 133), expected)
    assert np.array_equal(read_region(str(path), 50, 200, 70, 133), expected)
    with open(path, "rb") as f:
        with RegionReader(f) as reader:
            assert reader.by_region and np.array_equal(reader.read(50, 200, 70, 133), expected)
        assert not f.closed  # the caller's file stays the caller's
    assert image_size(path) == array.shape[:2]


@pytest.mark.parametrize(
    ("case", "array", "kwargs"),
    [
        ("white-is-zero", photo((40, 50))[..., 0], {"photometric": "miniswhite"}),
        ("planar-separate", np.moveaxis(photo((40, 50)), 2, 0), {"photometric": "rgb", "planarconfig": "separate"}),
        ("rotated", photo((40, 50)), {"photometric": "rgb", "extratags": [(274, 3, 1, 6, True)]}),
        ("int32", RNG.integers(0, 60000, (30, 40)).astype(np.int32), {"photometric": "minisblack"}),
    ],
)
def test_other_tiffs_are_decoded_once_as_decode_does(case, array, kwargs):
    data = tiff_bytes(array, **kwargs)
    try:
        full = decode(data).rgb
    except ImageError:
        with pytest.raises(ImageError):
            RegionReader(data)
        return
    with RegionReader(data) as reader:
        assert not reader.by_region, case
        assert (reader.height, reader.width) == full.shape[:2]
        for y0, x0, h, w in regions(*full.shape[:2], 5, seed=1):
            assert np.array_equal(reader.read(y0, x0, h, w), full[y0 : y0 + h, x0 : x0 + w])
    assert image_size(data) == full.shape[:2]  # 6: rotated, height and width swapped


def test_jpeg_and_png_are_decoded_once_with_exif_orientation(tmp_path):
    img = Image.open(skimage_photo("chelsea.png")).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif)
    jpeg = buf.getvalue()
    full = decode(jpeg).rgb
    assert full.shape[:2] == (img.width, img.height)
    assert image_size(jpeg) == full.shape[:2]
    with RegionReader(jpeg) as reader:
        assert not reader.by_region
        assert np.array_equal(reader.read(100, 30, 200, 150), full[100:300, 30:180])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert image_size(buf.getvalue()) == (img.height, img.width)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR that claim ``width × height``, and no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    idat = struct.pack(">I", 1 << 20) + b"IDAT"  # a data chunk begins; its bytes never come
    return b"\x89PNG\r\n\x1a\n" + chunk + idat


def test_image_size_reads_the_header_only():
    # 60000 × 50000: Pillow itself refuses to open it (over twice its bomb limit); there are no pixels.
    data = png_header_only(60000, 50000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    assert image_size(data) == (50000, 60000)
    with pytest.raises(ImageError, match="size"):
        image_size(b"not an image at all")


def test_max_image_pixels_replaces_pillows_guard(monkeypatch):
    rgb = photo((60, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # as if Pillow's default were 5000 pixels
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    with pytest.raises(ImageError, match="too large"):
        decode(png.getvalue())
    with pytest.raises(ImageError, match="too large"):
        RegionReader(png.getvalue(), max_image_pixels=5999)
    with RegionReader(png.getvalue(), max_image_pixels=6000) as reader:  # raised explicitly: read
        assert reader.read(0, 0, 60, 100).shape == (60, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 5000  # restored
    tif = tiff_bytes(rgb, tile=(16, 16), photometric="rgb")
    with pytest.raises(ImageError, match=r"60x100 = 6000 pixels exceeds max_image_pixels 5999"):
        RegionReader(tif, max_image_pixels=5999)
    assert RegionReader(tif, max_image_pixels=None).by_region
    with pillow_pixel_limit(None):
        assert Image.MAX_IMAGE_PIXELS is None
    assert Image.MAX_IMAGE_PIXELS == 5000


def test_bad_regions_and_files_are_named():
    data = tiff_bytes(photo((40, 50)), tile=(16, 16), photometric="rgb")
    reader = RegionReader(data)
    for bad in ((0, 0, 41, 1), (-1, 0, 2, 2), (0, 45, 1, 6), (0, 0, 0, 5)):
        with pytest.raises(ValueError, match=r"not inside the 40x50 image"):
            reader.read(*bad)
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(0, 0, 1, 1)
    with pytest.raises(ImageError, match="TIFF"):
        RegionReader(data[:200])
    with pytest.raises(ValueError, match="high_bit_depth"):
        RegionReader(data, high_bit_depth="auto")  # type: ignore[arg-type]


BIG = (4096, 3072)  # 36 MiB as RGB; a 512 × 640 region is ~1 MiB


def pattern(y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """A deterministic RGB picture of any region: the same values whichever way it is cut."""
    yy, xx = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    return np.stack([(yy // 8 * 3 + xx // 8) % 251, (yy ^ xx) & 255, (yy // 16 + xx // 16) % 256], axis=-1).astype(
        np.uint8
    )


@pytest.fixture(scope="module")
def big_tiffs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("big")
    h, w = BIG
    tiled, striped = str(root / "tiled.tif"), str(root / "striped.tif")

    def tiles():  # written tile by tile: never the whole image in memory here either
        for ty in range(0, h, 256):
            for tx in range(0, w, 256):
                yield pattern(ty, tx, 256, 256)

    tifffile.imwrite(tiled, tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(256, 256), photometric="rgb",
                     compression="zlib", compressionargs={"level": 1}, bigtiff=True)  # fmt: skip
    whole = np.empty((h, w, 3), dtype=np.uint8)  # tifffile writes strips from a whole page only
    for y in range(0, h, 512):
        whole[y : y + 512] = pattern(y, 0, 512, w)
    tifffile.imwrite(striped, whole, rowsperstrip=64, photometric="rgb",
                     compression="zlib", compressionargs={"level": 1})  # fmt: skip
    return {"tiled": tiled, "striped": striped}


@pytest.mark.parametrize("layout", ["tiled", "striped"])
def test_a_region_of_a_large_tiff_is_read_in_bounded_memory(big_tiffs, layout):
    # In a fresh process, tracemalloc sees every numpy and bytes allocation of the read.
    code = textwrap.dedent(
        """
        import json, sys, tracemalloc
        import numpy as np
        import tifffile, imagecodecs  # imported by the reader otherwise: their modules are not the read
        from segbatch.io.regions import RegionReader
        tracemalloc.start()
        with RegionReader(sys.argv[1], max_image_pixels=None) as reader:
            region = reader.read(1000, 1500, 512, 640)
            size = [reader.height, reader.width]
        peak = tracemalloc.get_traced_memory()[1]
        np.save(sys.argv[2], region)
        print(json.dumps({"peak": peak, "size": size}))
        """
    )
    out_path = big_tiffs[layout] + ".region.npy"
    proc = subprocess.run(
        [sys.executable, "-c", code, big_tiffs[layout], out_path], capture_output=True, text=True, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["size"] == list(BIG)
    assert np.array_equal(np.load(out_path), pattern(1000, 1500, 512, 640))
    image_bytes = BIG[0] * BIG[1] * 3
    region_bytes = 512 * 640 * 3
    # Measured: 2.3 MiB tiled (the region, then the 3 × 4 tiles it meets one at a time),
    # 5.1 MiB striped (the 9 strips of 64 rows × the full width, one at a time, 1 MiB read ahead); the
    # whole decode: 74 MiB.
    assert result["peak"] < 8 * region_bytes < image_bytes / 4, result
