"""torchvision imported without torch._dynamo, in fresh processes (what a model actor starts as)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DYNAMO = "print('dynamo loaded:', 'torch._dynamo' in sys.modules)"


def _python(code: str, *path: Path) -> list[str]:
    prefix = f"import sys\nsys.path[:0] = {[str(p) for p in path]!r}\n"
    out = subprocess.run([sys.executable, "-c", prefix + code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_plain_torchvision_import_loads_the_compiler():
    """The cost segbatch avoids: a plain import loads torch._dynamo (if this fails, a torchvision
    no longer does, and segbatch.models.vision_import can go)."""
    assert _python(f"import torchvision\n{DYNAMO}") == ["dynamo loaded: True"]


def test_models_build_and_run_without_the_compiler():
    """What an actor does: the zoo (which imports torchvision through the stand-in), a semantic
    model and Mask R-CNN built and run, roi_align and the JPEG decoder called; torch._dynamo is
    never loaded, and importing it afterwards gives the real package (the stand-in is gone)."""
    code = f"""
import torch
import segbatch.models.zoo
from torchvision.models import segmentation, detection
from torchvision.ops import roi_align
from torchvision.io import decode_jpeg, encode_jpeg
torch.manual_seed(0)
with torch.inference_mode():
    out = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()(
        torch.rand(1, 3, 64, 64))["out"]
    print(tuple(out.shape))
    found = detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).eval()(
        [torch.rand(3, 64, 64)])[0]
    print(sorted(found))
    print(tuple(roi_align(torch.rand(1, 2, 8, 8), torch.tensor([[0, 0, 0, 4, 4.0]]), (2, 2)).shape))
print(tuple(decode_jpeg(encode_jpeg(torch.zeros(3, 8, 8, dtype=torch.uint8))).shape))
{DYNAMO}
ra = sys.modules['torchvision.ops.roi_align']
print('compile supported on cpu:', ra.is_compile_supported('cpu'))
import torch._dynamo.utils as utils
print('real utils:', hasattr(utils, 'counters'), 'torch._dynamo.utils' in sys.modules)
"""
    assert _python(code) == [
        "(1, 3, 64, 64)",
        "['boxes', 'labels', 'masks', 'scores']",
        "(1, 2, 2, 2)",
        "(3, 8, 8)",
        "dynamo loaded: False",
        "compile supported on cpu: True",
        "real utils: True True",
    ]


def _package(root: Path, name: str, body: str) -> Path:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(body)
    return root


def test_a_package_that_needs_more_of_the_compiler_is_imported_plainly(tmp_path):
    """The stand-in has one function: a package importing another name from torch._dynamo.utils
    fails against it, and is imported again the ordinary way, with the real module."""
    root = _package(tmp_path, "needs_counters", "from torch._dynamo.utils import counters\nCOUNTERS = counters\n")
    code = f"""
from segbatch.models.vision_import import import_torchvision
module = import_torchvision('needs_counters')
import torch._dynamo.utils as utils
print(module.COUNTERS is utils.counters, sys.modules['torch._dynamo'].utils is utils)
{DYNAMO}
"""
    assert _python(code, root) == ["True True", "dynamo loaded: True"]


def test_a_package_that_imports_the_compiler_gets_the_real_utils(tmp_path):
    """A package that imports torch._dynamo itself during the import: afterwards torch._dynamo.utils
    is the real module, in sys.modules and on the package, never the stand-in."""
    root = _package(tmp_path, "imports_dynamo", "import torch._dynamo\n")
    code = f"""
from segbatch.models.vision_import import import_torchvision
import_torchvision('imports_dynamo')
import torch._dynamo
utils = sys.modules['torch._dynamo.utils']
print(utils is torch._dynamo.utils, hasattr(utils, 'counters'))
{DYNAMO}
"""
    assert _python(code, root) == ["True True", "dynamo loaded: True"]
