"""ONNX Runtime sessions: provider selection, sessions from protos of any size, batched runs."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx

from .errors import ModelError, OnnxoptError, ProviderError

__all__ = [
    "ort_message",
    "PROVIDERS",
    "available_providers",
    "providers_for",
    "create_session",
    "check_provider_active",
    "run_batches",
    "run_dataset",
    "is_ort_format",
]

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "cuda", "auto")
_ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def cuda_available() -> bool:
    return "CUDAExecutionProvider" in available_providers()


def providers_for(provider: str = "cpu", *, cuda_options: dict | None = None) -> list:
    """ORT provider list for ``cpu`` / ``cuda`` / ``auto``; ``cuda`` without CUDA is a ProviderError."""
    provider = (provider or "cpu").lower()
    if provider not in PROVIDERS:
        raise ProviderError(f"unknown provider '{provider}' (choose from {', '.join(PROVIDERS)})")
    if provider == "auto":
        provider = "cuda" if cuda_available() else "cpu"
    if provider == "cuda":
        if not cuda_available():
            raise ProviderError(
                "CUDAExecutionProvider is not available in this onnxruntime build "
                f"(have: {', '.join(available_providers())}); install onnxruntime-gpu or use --provider cpu"
            )
        return [("CUDAExecutionProvider", dict(cuda_options or {})), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_ORT_IDENTIFIER = b"ORTM"  # the flatbuffer file identifier of onnxruntime's InferenceSession table


def is_ort_format(src) -> bool:
    """True for an ONNX Runtime ``.ort`` model, a path or bytes: the flatbuffer identifier
    ``ORTM`` at offset 4, whatever the file is named."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        head = bytes(src[:8])
    elif isinstance(src, (str, Path)):
        try:
            with open(src, "rb") as fh:
                head = fh.read(8)
        except OSError:
            return False
    else:
        return False
    return len(head) == 8 and head[4:8] == _ORT_IDENTIFIER


@contextlib.contextmanager
def _config_from_model_off():
    """ONNX Runtime 1.32 parses a model as protobuf to read its ``ort_config`` when
    ``ORT_LOAD_CONFIG_FROM_MODEL=1``, which fails on an ``.ort`` flatbuffer: off meanwhile."""
    import os

    before = os.environ.pop("ORT_LOAD_CONFIG_FROM_MODEL", None)
    try:
        yield
    finally:
        if before is not None:
            os.environ["ORT_LOAD_CONFIG_FROM_MODEL"] = before


def resolve_provider(provider: str) -> str:
    """'auto' -> 'cuda' or 'cpu'; validates the others."""
    first = providers_for(provider)[0]
    name = first[0] if isinstance(first, tuple) else first
    return "cuda" if name == "CUDAExecutionProvider" else "cpu"


def create_session(
    model,
    provider: str = "cpu",
    *,
    threads: int | None = None,
    inter_threads: int | None = None,
    optimization_level: str | None = None,
    cuda_options: dict | None = None,
    sequential: bool = True,
    mem_pattern: bool = True,
    config=None,
    optimized_path=None,
    disabled_optimizers: list[str] | None = None,
    profile_prefix: str | None = None,
    save_ort_format: bool = False,
    error=ModelError,
):
    """An ``InferenceSession`` for a path or a proto; protos over 2 GB go through a temp file.
    An ONNX Runtime ``.ort`` model (a path or its bytes, ``is_ort_format``) is loaded as one.

    ``config``: a ``serving.SessionConfig`` (threads, execution mode, optimization level,
    spinning); without it one is built from ``threads`` / ``inter_threads`` /
    ``sequential`` / ``optimization_level``.  Load failures are raised as ``error``
    (ModelError for user input; verification passes hand in VerificationError).
    ``mem_pattern=False`` turns off ORT's memory pattern, whose block is allocated on the
    second run beside the first run's arena chunks (peak memory of a many-output model, e.g.
    an augmented calibration model, nearly doubles).  ``optimized_path``: ORT also writes
    the graph it optimized for this provider there (``optimized_model_filepath``).  ``disabled_optimizers``:
    names of ONNX Runtime graph transformers or rewrite rules left out (unknown names are
    ignored by ORT); ``profile_prefix``: ORT's profiler on, its JSON trace named after it
    (``end_profiling``); ``save_ort_format``: the graph at ``optimized_path`` is written in
    ONNX Runtime's ``.ort`` format (``session.save_model_format = ORT``).
    """
    import onnxruntime as ort

    from .session_options import SessionConfig

    if config is None:
        config = SessionConfig(
            intra_op_threads=int(threads or 0),
            inter_op_threads=int(inter_threads or 0),
            execution_mode="sequential" if sequential else "parallel",
            optimization_level=optimization_level or "all",
        )
    so = config.session_options(ort)
    # 4 (fatal only): a load or run failure is raised as ``error`` with ORT's message, and
    # ORT's own ERROR lines on stderr would break the one-line error contract; -vv shows them
    so.log_severity_level = 3 if log.isEnabledFor(logging.DEBUG) else 4
    if not mem_pattern:
        so.enable_mem_pattern = False
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
        if save_ort_format:
            so.add_session_config_entry("session.save_model_format", "ORT")
    ort_format = is_ort_format(model)
    if ort_format:
        so.add_session_config_entry("session.load_model_format", "ORT")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    providers = providers_for(provider, cuda_options=cuda_options)
    path = None if isinstance(model, (onnx.ModelProto, bytes, bytearray)) else Path(model)
    extra = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
    # onnxruntime's Python wrapper prints an "EP Error ... Falling back" banner on stdout when
    # session options fail (a model's ort_config, for one); the failure is raised as one line
    with contextlib.redirect_stdout(io.StringIO()), (_config_from_model_off() if ort_format else contextlib.nullcontext()):
        sess = _open_session(ort, model, path, so, providers, error, extra)
    wants_cuda = isinstance(providers[0], tuple) and providers[0][0] == "CUDAExecutionProvider"
    check_provider_active(sess, "cuda" if wants_cuda else "cpu", path)  # "auto" included
    return sess


def _open_session(ort, model, path, so, providers, error, extra=None):
    extra = extra or {}
    try:
        if path is not None:
            return ort.InferenceSession(str(path), so, providers=providers, **extra)
        if isinstance(model, (bytes, bytearray)):  # an .ort model's bytes
            return ort.InferenceSession(bytes(model), so, providers=providers, **extra)
        from .io import exceeds_protobuf, is_lazy, lazy_folders, save_model, strip_basepath

        if is_lazy(model):
            folders = lazy_folders(model)
            if len(folders) == 1 and not exceeds_protobuf(model, margin=2**20):
                # weights stay in their file: ONNX Runtime reads them from the folder (no
                # copy of a large model in this process, no temporary file)
                skeleton = strip_basepath(copy.deepcopy(model))
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", folders.pop())
                return ort.InferenceSession(skeleton.SerializeToString(), so, providers=providers, **extra)
        elif not exceeds_protobuf(model, margin=2**20):
            return ort.InferenceSession(model.SerializeToString(), so, providers=providers, **extra)

        with tempfile.TemporaryDirectory(prefix="onnxopt-") as tmp:
            tmp_path = Path(tmp) / "model.onnx"
            save_model(model, tmp_path, external_data=True)
            return ort.InferenceSession(str(tmp_path), so, providers=providers, **extra)
    except ProviderError:
        raise
    except Exception as exc:
        raise error(f"onnxruntime cannot load the model: {ort_message(exc)}", path) from exc


def check_provider_active(session, provider: str, path=None) -> None:
    """``ProviderError`` when a CUDA session did not get the CUDA provider.

    onnxruntime-gpu lists ``CUDAExecutionProvider`` as available even when its CUDA or
    cuDNN libraries cannot be loaded; the session is then created on the CPU provider with
    only a logged error, and every figure would be a CPU figure labelled CUDA."""
    if provider != "cuda":
        return
    active = list(session.get_providers())
    if not active or active[0] != "CUDAExecutionProvider":
        raise ProviderError(
            "onnxruntime did not create the session on CUDAExecutionProvider (session providers: "
            f"{', '.join(active) or 'none'}); the CUDA or cuDNN libraries onnxruntime-gpu needs "
            "are probably missing or do not match its build",
            path,
        )


def run_batches(session, feeds: Iterable[dict[str, np.ndarray]], output_names: list[str] | None = None, error=ModelError) -> Iterable[list[np.ndarray]]:
    """Yield the outputs of ``session`` for each feed."""
    for feed in feeds:
        try:
            yield session.run(output_names, feed)
        except Exception as exc:
            raise error(f"onnxruntime failed to run the model: {ort_message(exc)}") from exc


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?")
_SOURCE_LOCATION = re.compile(r"^(?:/\S+/)?\w+\.(?:cc|cpp|h):\d+ ")


def ort_message(exc: BaseException, limit: int = 400) -> str:
    """One line of what ONNX Runtime said, without its error code, the model path (our
    errors name the file already) and the C++ source location and function signature that
    would otherwise push the actual reason past ``limit`` characters."""
    msg = " ".join(str(exc).split())
    msg = _ORT_PREFIX.sub("", msg)
    loc = _SOURCE_LOCATION.match(msg)
    if loc:
        msg = msg[loc.end() :]
        head, paren, _ = msg.partition("(")
        if paren and " " not in head.strip().split("::")[-1] and "::" in head:
            depth = 0
            for i, ch in enumerate(msg):  # skip the signature up to its matching ')'
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and ch == ")":
                    msg = msg[i + 1 :].removeprefix(" const").lstrip()
                    break
    msg = msg.strip() or " ".join(str(exc).split())
    return msg if len(msg) <= limit else msg[:limit] + "..."


def concat_outputs(per_batch: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Concatenate per-batch outputs on axis 0 (or stack when an output is a scalar)."""
    if not per_batch:
        return []
    out = []
    for i in range(len(per_batch[0])):
        parts = [np.asarray(b[i]) for b in per_batch]
        if len(parts) == 1:
            out.append(parts[0])
        elif all(p.ndim >= 1 for p in parts) and len({p.shape[1:] for p in parts}) == 1:
            out.append(np.concatenate(parts, axis=0))
        else:
            out.append(np.stack([p.reshape(-1) for p in parts]) if len({p.size for p in parts}) == 1 else np.concatenate([p.reshape(-1) for p in parts]))
    return out


def run_dataset(
    model_or_session, dataset, *, provider: str = "cpu", batch_size: int | None = None, limit: int | None = None, error=ModelError
) -> list[np.ndarray]:
    """Run a model (path, proto or session) over a Dataset; outputs concatenated per output."""
    sess = model_or_session if hasattr(model_or_session, "run") else create_session(model_or_session, provider, error=error)
    try:
        return concat_outputs(list(run_batches(sess, dataset.batches(batch_size, limit), error=error)))
    except OnnxoptError as exc:
        if getattr(dataset, "source", None) == "<synthesized>" and exc.message.startswith("onnxruntime failed to run"):
            # synthesized inputs are a common cause: say what they were
            exc.message += f"; the inputs were {dataset.describe()}: give --shape NAME:D1,D2,... or --data"
        raise


# Activations one scoring batch may hold at once (``scoring_batch``).  PP-OCRv4 rec (23 MiB
# per sample by ``stats.live_bytes``) scored at batch 32 peaked at 1060 MB in optimize, at
# batch 8 at 717 MB, and ran faster.
SCORING_BYTES = 192 << 20


def scoring_batch(model, dataset, budget: int | None = None) -> int | None:
    """The batch (at most ``data.DEFAULT_BATCH``) at which ``model`` (a path or proto) runs
    over ``dataset`` with its live activations (``stats.live_bytes``) within ``budget``
    bytes (default ``SCORING_BYTES``); None (the default batch) when that cannot be told without running it."""
    from .data import DEFAULT_BATCH
    from .stats import live_bytes

    try:
        if not isinstance(model, onnx.ModelProto):
            model = onnx.load(str(model), load_external_data=False)
        per = live_bytes(model, dataset.first_batch(1))
    except Exception as exc:  # a session, a dataset-like object without first_batch, odd shapes
        log.debug("scoring batch not bounded: %s", exc)
        return None
    return max(1, min(DEFAULT_BATCH, (SCORING_BYTES if budget is None else budget) // max(per, 1)))


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere): after
    a stage that freed large models and sessions, the allocator otherwise keeps the pages, and
    the process's resident size stays at the stage's peak."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
