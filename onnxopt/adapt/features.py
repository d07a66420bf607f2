"""Feature extraction, streamed batch by batch through onnxruntime.

Two models run on each batch of DATA: the *reference* (the input model that also outputs
the feature tensor) and the *extractor* (the cut model, which outputs the pooled ``[N, D]``
features and, when pooling was added, the raw feature tensor).  Per batch the raw feature
tensors of the two are compared and only small things are kept: the pooled features and the
reference model's predictions.  So memory holds one batch of the feature maps, however
large DATA is, and the cut is verified on every sample:

    max_abs = max |F_cut - F_ref|,   rel_l2 = ||F_cut - F_ref|| / ||F_ref||

The cut is exact when ``rel_l2 <= 1e-4`` or ``max_abs <= 1e-6`` (the rule for exact
transforms in ``core.pipeline``) and NaN/Inf appear in the same places.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from ..errors import VerificationError
from ..runtime import create_session, run_batches
from ..verify import is_exact

__all__ = ["FeatureAgreement", "Extraction", "probe", "extract", "predictions"]

log = logging.getLogger(__name__)

DEFAULT_BATCH = 256


@dataclass
class FeatureAgreement:
    """Streaming comparison of the cut model's feature tensor with the input model's."""

    tensor: str
    shape: list
    samples: int = 0
    max_abs: float = 0.0
    rel_l2: float = 0.0
    nan_mismatch: bool = False
    shape_mismatch: str = ""
    _sq_diff: float = 0.0
    _sq_ref: float = 0.0

    def add(self, ref: np.ndarray, new: np.ndarray) -> None:
        if ref.shape != new.shape:
            self.shape_mismatch = self.shape_mismatch or f"{list(new.shape)} != {list(ref.shape)}"
            return
        a, b = ref.astype(np.float64), new.astype(np.float64)
        finite = np.isfinite(a) & np.isfinite(b)
        if np.any(np.isnan(a) != np.isnan(b)) or np.any(np.isinf(a) != np.isinf(b)):
            self.nan_mismatch = True
        diff = np.where(finite, b - a, 0.0)
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.abs(diff).max()))
        self._sq_diff += float(np.sum(diff * diff))
        self._sq_ref += float(np.sum(np.where(finite, a, 0.0) ** 2))
        self.samples += int(ref.shape[0]) if ref.ndim else 1
        self.rel_l2 = math.sqrt(self._sq_diff / self._sq_ref) if self._sq_ref > 0 else (0.0 if self._sq_diff == 0 else float("inf"))

    @property
    def ok(self) -> bool:
        return not self.shape_mismatch and not self.nan_mismatch and is_exact(self.rel_l2, self.max_abs)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["ok"] = self.ok
        d["bitwise_equal"] = self.ok and self.max_abs == 0.0
        return d


@dataclass
class Extraction:
    """Pooled features ``[n, D]`` (float32), the reference model's predictions on the same
    samples (None when its output is not class scores or labels) and the cut's agreement."""

    features: np.ndarray
    reference_predictions: np.ndarray | None
    reference_classes: int | None
    agreement: FeatureAgreement

    @property
    def samples(self) -> int:
        return int(self.features.shape[0])


def predictions(output: np.ndarray) -> np.ndarray | None:
    """Predicted class per sample: argmax of ``[N, C]`` scores, or ``[N]`` integer labels."""
    output = np.asarray(output)
    if output.ndim == 2 and output.shape[1] > 1 and output.dtype.kind == "f":
        return np.argmax(output, axis=1)
    if output.dtype.kind in "iu" and (output.ndim == 1 or (output.ndim == 2 and output.shape[1] == 1)):
        return output.reshape(-1).astype(np.int64)
    return None


def probe(reference_session, dataset, feature: str, *, batch_size: int = 8) -> np.ndarray:
    """The feature tensor on the first batch of ``dataset`` (to learn its dtype and shape)."""
    feed = dataset.first_batch(batch_size)
    return np.asarray(next(iter(run_batches(reference_session, [feed], [feature])))[0])


def extract(
    reference_session, extractor: onnx.ModelProto, dataset, *, feature: str, pooled: str, provider: str = "cpu", batch_size: int = DEFAULT_BATCH
) -> Extraction:
    """Run both models over ``dataset`` batch by batch (see the module docstring).

    ``reference_session``: a session of the input model that also outputs ``feature``.
    Raises ``VerificationError`` when the cut does not reproduce the feature tensor.
    """
    cut_sess = create_session(extractor, provider, error=VerificationError)
    first_out = reference_session.get_outputs()[0].name
    agreement = FeatureAgreement(feature, [])
    feats, preds = [], []
    classes = None
    usable_preds = True
    for feed in dataset.batches(batch_size):
        ref_out = reference_session.run(
            [first_out, feature] if first_out != feature else [feature], feed
        )
        cut_out = cut_sess.run([pooled, feature] if pooled != feature else [feature], feed)
        f_ref, f_cut = np.asarray(ref_out[-1]), np.asarray(cut_out[-1])
        if not agreement.shape:
            agreement.shape = ["N"] + list(f_ref.shape[1:])
        agreement.add(f_ref, f_cut)
        pooled_arr = np.asarray(cut_out[0])
        feats.append(pooled_arr.reshape(pooled_arr.shape[0], -1).astype(np.float32))
        p = predictions(ref_out[0])
        if p is None or len(p) != pooled_arr.shape[0]:
            usable_preds = False
        elif usable_preds:
            preds.append(p)
            if np.asarray(ref_out[0]).ndim == 2 and np.asarray(ref_out[0]).dtype.kind == "f":
                classes = int(np.asarray(ref_out[0]).shape[1])
    if not feats:
        raise VerificationError("DATA yielded no batches")
    if not agreement.ok:
        why = (
            agreement.shape_mismatch
            and f"shape {agreement.shape_mismatch}"
            or ("NaN/Inf pattern differs" if agreement.nan_mismatch else f"max abs {agreement.max_abs:.3g}, relative L2 {agreement.rel_l2:.3g}")
        )
        raise VerificationError(f"the cut model does not reproduce feature tensor '{feature}' ({why})")
    return Extraction(np.concatenate(feats), np.concatenate(preds) if usable_preds and preds else None, classes, agreement)
