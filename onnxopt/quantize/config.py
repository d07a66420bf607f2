"""One quantization configuration (a candidate of ``auto``), validated, ORT-independent."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import UsageError

__all__ = [
    "MODES", "FORMATS", "INT_TYPES", "INT4_METHODS", "QuantConfig", "WEIGHTED_OP_TYPES", "dynamic_op_types", "static_op_types", "known_op_types",
    "op_types_for_mode", "int4_op_types", "op_types_problem", "check_choice", "EQUALIZE", "QuantizeConfig",
]

MODES = ("auto", "dynamic", "static", "int4")
ROUNDINGS = ("nearest", "gptq")  # static QDQ weight rounding (rounding.py)
INT4_METHODS = ("rtn", "hqq")  # ONNX Runtime's DefaultWeightOnlyQuantConfig (round to nearest) / HQQ
FORMATS = ("qdq", "qoperator")
INT_TYPES = ("int8", "uint8")
EQUALIZE = ("auto", "always", "off")

# Ops with weights: the nodes whose exclusion the accuracy-budget search decides.
WEIGHTED_OP_TYPES = ("Attention", "Conv", "ConvTranspose", "Gemm", "LSTM", "MatMul")


def dynamic_op_types() -> tuple[str, ...]:
    """ONNX Runtime's IntegerOps registry, plus Gemm: onnxopt rewrites a Gemm with constant
    weights into MatMul + Add before dynamic quantization (ORT has no integer Gemm)."""
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return tuple(sorted(set(IntegerOpsRegistry) | {"Gemm"}))


def static_op_types() -> tuple[str, ...]:
    """What ``quantize_static`` quantizes by default: the QLinear and QDQ registries."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return tuple(sorted(set(QLinearOpsRegistry) | set(QDQRegistry)))


def known_op_types() -> tuple[str, ...]:
    return tuple(sorted(set(dynamic_op_types()) | set(static_op_types())))


def op_types_for_mode(mode: str) -> tuple[str, ...]:
    """What ``mode`` (dynamic | static | auto) can quantize."""
    return {"dynamic": dynamic_op_types, "static": static_op_types, "int4": int4_op_types}.get(mode, known_op_types)()


def int4_op_types() -> tuple[str, ...]:
    """What ``int4`` mode quantizes: MatMul with a constant 2-D weight (``MatMulNBits``),
    and Gemm with a constant weight once onnxopt rewrote it as MatMul + Add."""
    return ("Gemm", "MatMul")


def op_types_problem(op_types, mode: str = "auto") -> str | None:
    """Why ``op_types`` cannot be asked of ``mode`` (None: fine).  An op type no mode knows
    is unknown; one that only the other mode quantizes (``Relu`` in dynamic mode,
    ``LSTM`` in static mode) is refused too: that mode would silently leave it in float."""
    known = set(known_op_types()) | set(int4_op_types())
    bad = [t for t in op_types if t not in known]
    if bad:
        return f"unknown op type(s) {', '.join(bad)} for --op-types (quantizable: {', '.join(sorted(known))})"
    allowed = set(op_types_for_mode(mode))
    bad = [t for t in op_types if t not in allowed]
    return f"--op-types {', '.join(bad)}: not quantizable in {mode} mode (it quantizes: {', '.join(sorted(allowed))})" if bad else None


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how.  ``op_types`` None: the mode's defaults (see ``op_types_for``)."""

    mode: str = "dynamic"  # dynamic | static | int4 (weight-only MatMulNBits)
    format: str = "qdq"  # qdq | qoperator (static only; dynamic is always operator-based)
    method: str = "minmax"  # minmax | percentile | entropy (static only)
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "int8"
    activation_type: str = "uint8"
    op_types: tuple[str, ...] | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)
    block_size: int = 32  # int4: weights per quantization block along K (a power of 2, >= 16)
    int4_method: str = "rtn"  # int4: rtn | hqq
    equalized: bool = False  # built from the model after the equalize + smooth-quant passes
    bias_correction: bool = False  # static QDQ: expected output shift of each weight removed from its bias
    weight_rounding: str = "nearest"  # static QDQ: nearest | gptq (rounding.py)

    def __post_init__(self):
        from .calibrate import METHODS

        for name, value, choices in (
            ("mode", self.mode, ("dynamic", "static", "int4")), ("int4 method", self.int4_method, INT4_METHODS), ("format", self.format, FORMATS),
            ("method", self.method, METHODS), ("weight type", self.weight_type, INT_TYPES), ("activation type", self.activation_type, INT_TYPES),
            ("weight rounding", self.weight_rounding, ROUNDINGS),
        ):
            check_choice(name, value, choices)
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"--block-size must be a power of 2 >= 16, got {self.block_size}")
        if self.op_types is not None:
            why = op_types_problem(self.op_types, self.mode)
            if why:
                raise UsageError(why)
        if self.bias_correction and (self.mode != "static" or self.format != "qdq"):
            raise UsageError("bias correction applies to static QDQ models (--mode static --format qdq)")
        if self.weight_rounding != "nearest" and (self.mode != "static" or self.format != "qdq"):
            raise UsageError(f"--weight-rounding {self.weight_rounding} applies to static QDQ models (--mode static --format qdq)")
        if self.mode == "static" and self.activation_type == "int8" and self.weight_type == "uint8":
            raise UsageError("int8 activations with uint8 weights is not supported by ONNX Runtime; use --weight-type int8")

    @property
    def label(self) -> str:
        if self.mode == "int4":
            return f"int4 {self.int4_method} block {self.block_size}"
        base = "dynamic" if self.mode == "dynamic" else "static" if self.format == "qdq" else "static qoperator"
        base += " per-channel" if self.per_channel else (" per-tensor" if self.mode == "static" else "")
        return (
            base
            + (" reduce-range" if self.reduce_range else "")
            + (" equalized" if self.equalized else "")
            + (" bias-corrected" if self.bias_correction else "")
            + (f" {self.weight_rounding}-rounded" if self.weight_rounding != "nearest" else "")
        )

    def op_types_for(self, provider: str = "cpu") -> tuple[str, ...]:
        """The op types to quantize: explicit ``op_types``, else the mode's defaults.  On CPU,
        dynamic mode leaves Conv alone (ConvInteger is usually slower than FP32 there)."""
        if self.op_types is not None:
            return tuple(self.op_types)
        if self.mode == "int4":
            return int4_op_types()
        return tuple(t for t in dynamic_op_types() if not (t == "Conv" and provider == "cpu")) if self.mode == "dynamic" else static_op_types()

    def with_(self, **kw) -> QuantConfig:
        return replace(self, **kw)

    def to_dict(self) -> dict:
        d = {"mode": self.mode, "per_channel": self.per_channel, "reduce_range": self.reduce_range, "weight_type": self.weight_type}
        if self.mode == "static":
            d.update(format=self.format, method=self.method, activation_type=self.activation_type)
        if self.mode == "int4":
            d = {"mode": "int4", "block_size": self.block_size, "int4_method": self.int4_method}
        optional = {
            "op_types": None if self.op_types is None else list(self.op_types), "equalized": self.equalized or None,
            "bias_correction": self.bias_correction or None, "exclude": sorted(self.exclude) or None,
            "weight_rounding": None if self.weight_rounding == "nearest" else self.weight_rounding,
        }
        return {**d, **{k: v for k, v in optional.items() if v is not None}}


@dataclass
class QuantizeConfig:
    """The options of ``onnxopt.quantize`` (see its docstring), with its defaults;
    ``validate`` checks them (``UsageError``, exit 2).  ``calibration`` / ``eval_data``:
    DATA paths or ``Dataset``; ``op_types`` / ``exclude_nodes``: names, or comma-separated
    text."""

    mode: str = "auto"
    format: str = "qdq"
    calibration: object = None
    method: str = "minmax"
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "int8"
    activation_type: str = "uint8"
    op_types: object = None
    exclude_nodes: object = None
    provider: str = "cpu"
    max_accuracy_drop: float | None = None
    eval_data: object = None
    metric: str | None = None
    allow_slower: bool = False
    shapes: dict | None = None
    batch: int = 32
    calibration_batch: int | None = None
    search_samples: int = 200
    max_evals: int = 40
    sensitivity: str = "float-one"
    timing_runs: int = 30
    timing_seconds: float | None = 20.0
    threads: int | None = None
    min_speedup: float = 1.0
    preprocess: bool = True
    timing: bool = True
    seed: int = 0
    model_type: str | None = None
    num_heads: int = 0
    hidden_size: int = 0
    fix_shapes: dict | None = None
    block_size: int = 32
    int4_method: str = "rtn"
    allow_collapse: bool = False
    equalize: str = "auto"
    bias_correction: bool = False
    weight_rounding: str = "nearest"

    def validate(self) -> QuantizeConfig:
        for name, value, choices in (
            ("mode", self.mode, MODES), ("format", self.format, FORMATS), ("weight type", self.weight_type, INT_TYPES),
            ("activation type", self.activation_type, INT_TYPES), ("equalize", self.equalize, EQUALIZE),
            ("weight rounding", self.weight_rounding, ROUNDINGS),
        ):
            check_choice(name, value, choices)
        if self.batch <= 0 or self.search_samples <= 0 or self.max_evals <= 0:
            raise UsageError("batch, search_samples and max_evals must be positive")
        if self.model_type is not None:
            from .transformer import MODEL_TYPES

            check_choice("model type", self.model_type, MODEL_TYPES)
            if self.num_heads < 0 or self.hidden_size < 0:
                raise UsageError("num_heads and hidden_size must be >= 0 (0: detect)")
        if not self.timing and not self.allow_slower:
            raise UsageError("timing=False needs allow_slower=True (speed is what decides otherwise)")
        if self.weight_rounding != "nearest" and (self.mode in ("dynamic", "int4") or self.format != "qdq"):
            raise UsageError(f"--weight-rounding {self.weight_rounding} applies to static QDQ models (--mode static or auto, --format qdq)")
        return self
