"""Weight-only INT4: MatMul with a constant weight -> ``MatMulNBits`` (ONNX Runtime).

``quantize_nbits`` runs ONNX Runtime's ``MatMulNBitsQuantizer``
(``onnxruntime.quantization.matmul_nbits_quantizer``) on the MatMul nodes whose weight
``B[K, N]`` is a constant 2-D float initializer.  Each column of ``B`` is cut into blocks of
``block_size`` rows; each block gets its own scale (symmetric: ``s = max|B_blk| / 7``,
``q = round(B / s)`` in ``[-8, 7]``).  Methods:

- ``rtn``: round to nearest with those scales (ORT's ``DefaultWeightOnlyQuantConfig``);
- ``hqq``: half-quadratic quantization (ORT's ``HQQWeightOnlyQuantConfig``): scale and zero
  point per block optimized to minimize ``|B - dequant(q)|_p`` (p < 1); it needs torch.

Activations stay in float: the kernel dequantizes the weight blocks on the fly, so the gain
is memory (about 1/7 of the FP32 weight bytes) and, at batch 1, memory-bound speed.
ORT's module imports ``onnx_ir`` (the ``int4`` extra); without it ``UnsupportedError``.
"""

from __future__ import annotations

import copy
import logging

import onnx

from ..errors import UnsupportedError

__all__ = ["nbits_weight_nodes", "quantize_nbits"]

log = logging.getLogger(__name__)

_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


def nbits_weight_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's MatMul nodes that ``MatMulNBits`` can replace: weight
    input ``B`` a 2-D float initializer."""
    inits = {t.name: t for t in model.graph.initializer}
    weights = [(n.name, inits.get(n.input[1])) for n in model.graph.node if n.op_type == "MatMul" and len(n.input) >= 2]
    return [name for name, w in weights if w is not None and len(w.dims) == 2 and w.data_type in _FLOATS]


def _module():
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    except ImportError as exc:
        raise UnsupportedError(f"--mode int4 needs ONNX Runtime's MatMulNBitsQuantizer, which failed to import ({exc}): pip install 'onnxopt[int4]'") from None
    return matmul_nbits_quantizer


def _algo(mnb, method: str, block_size: int):
    if method == "hqq":
        try:
            import torch  # noqa: F401  (ORT's HQQ quantizer computes with torch)
        except ImportError:
            raise UnsupportedError(
                "--int4-method hqq needs torch (ONNX Runtime's HQQ quantizer computes with it): pip install torch, or use --int4-method rtn"
            ) from None
        return mnb.HQQWeightOnlyQuantConfig(block_size=block_size, bits=4, op_types_to_quantize=("MatMul",))
    return mnb.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, op_types_to_quantize=("MatMul",), bits=4)


def quantize_nbits(model: onnx.ModelProto, *, block_size: int = 32, method: str = "rtn", nodes=None, exclude=()) -> onnx.ModelProto:
    """A copy of ``model`` with the MatMul nodes of ``nodes`` (default: every one
    ``nbits_weight_nodes`` lists) minus ``exclude`` as ``MatMulNBits`` (4 bits, blocks of
    ``block_size`` along K).  ``model`` is not changed."""
    mnb = _module()
    wanted = set(nbits_weight_nodes(model) if nodes is None else nodes) - set(exclude)
    skip = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    q = mnb.MatMulNBitsQuantizer(
        copy.deepcopy(model),
        bits=4,
        block_size=block_size,
        is_symmetric=True,
        nodes_to_exclude=skip,
        nodes_to_include=sorted(wanted) or None,
        op_types_to_quantize=("MatMul",),
        algo_config=_algo(mnb, method, block_size),
    )
    # ORT's module logs every node at INFO through a handler of its own: keep that out of stdout
    ort_log = logging.getLogger(mnb.__name__)
    saved = ort_log.level
    ort_log.setLevel(logging.WARNING)
    try:
        q.process()
    finally:
        ort_log.setLevel(saved)
    return q.model.model
