#!/usr/bin/env python
"""Build the small bundled ONNX models and data sets in ``models/``.

Trains four tiny classifiers on scikit-learn's bundled 8x8 digits data set
(no download needed), exports them to ONNX (opset 17), verifies every file
against torch and onnxruntime, and writes ``manifest.json``.

Needs the ``models`` extra (torch, scikit-learn)::

    pip install -e '.[models]'
    python models/build.py            # rebuilds into models/
    python models/build.py --out DIR  # rebuilds into DIR

Everything is seeded and training runs single-threaded with deterministic
algorithms, so a rebuild on the same software stack gives byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
OPSET = 17
N_CALIB = 400
N_TEST = 400
MAX_FILE_BYTES = 1_000_000
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
BATCH_DIM = "N"
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


# --------------------------------------------------------------------------- data


def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded split of the 1797 digits into train / calib / test."""
    digits = load_digits()
    x = (digits.images.astype(np.float64) / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=N_TEST, stratify=y, random_state=SEED
    )
    x_train, x_calib, y_train, y_calib = train_test_split(
        x_rest, y_rest, test_size=N_CALIB, stratify=y_rest, random_state=SEED + 1
    )
    return {
        "train": (np.ascontiguousarray(x_train), np.ascontiguousarray(y_train)),
        "calib": (np.ascontiguousarray(x_calib), np.ascontiguousarray(y_calib)),
        "test": (np.ascontiguousarray(x_test), np.ascontiguousarray(y_test)),
    }


def save_npz_deterministic(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps (byte-reproducible)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


# --------------------------------------------------------------------------- models


class DigitsMLP(nn.Module):
    def __init__(self, num_classes: int = 10, hidden: int = 384):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, image):
        return self.net(image)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 32), conv_bn_relu(32, 64), conv_bn_relu(64, 64)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, image):
        return self.fc(self.flatten(self.pool(self.features(image))))


class ResidualBlock(nn.Module):
    """y = relu(x + BN(Conv(relu(BN(Conv(x))))))"""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(x + y)


class DigitsResNet(nn.Module):
    def __init__(self, num_classes: int = 10, ch: int = 32, blocks: int = 4):
        super().__init__()
        self.stem = conv_bn_relu(1, ch)
        self.blocks = nn.Sequential(*[ResidualBlock(ch) for _ in range(blocks)])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, image):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(image)))))


# name -> spec. keep_bn: export explicit BatchNormalization nodes (no Conv+BN folding).
SPECS = {
    "digits_mlp": dict(
        cls=DigitsMLP,
        num_classes=10,
        epochs=40,
        lr=1e-3,
        keep_bn=False,
        doc="Digits 8x8 MLP classifier: Flatten-Linear(64,384)-ReLU-Linear(384,384)-ReLU-Linear(384,10).",
        arch="Flatten -> Linear(64,384) -> ReLU -> Linear(384,384) -> ReLU -> Linear(384,10)",
    ),
    "digits_cnn": dict(
        cls=DigitsCNN,
        num_classes=10,
        epochs=30,
        lr=2e-3,
        keep_bn=True,
        doc="Digits 8x8 CNN classifier: 3x(Conv3x3-BatchNorm-ReLU) 32/64/64 ch, global avg pool, Linear(64,10); explicit BatchNormalization nodes.",
        arch="3x [Conv3x3(pad1)-BatchNorm-ReLU] (1->32->64->64) -> GlobalAveragePool -> Flatten -> Linear(64,10)",
    ),
    "digits_resnet": dict(
        cls=DigitsResNet,
        num_classes=10,
        epochs=30,
        lr=2e-3,
        keep_bn=False,
        doc="Digits 8x8 residual CNN: stem Conv-BN-ReLU (32 ch), 4 residual blocks with identity skips, global avg pool, Linear(32,10); BN folded into Conv.",
        arch="Conv3x3(1->32)-BN-ReLU -> 4x [y = relu(x + BN(Conv(relu(BN(Conv(x))))))] (32 ch) -> GlobalAveragePool -> Flatten -> Linear(32,10)",
    ),
    "digits_cnn04": dict(
        cls=DigitsCNN,
        num_classes=5,
        epochs=30,
        lr=2e-3,
        keep_bn=True,
        doc=(
            "Digits 8x8 CNN trained on digits 0-4 only (5 classes), same architecture as digits_cnn; explicit "
            "BatchNormalization nodes. Base model for transfer learning."
        ),
        arch="3x [Conv3x3(pad1)-BatchNorm-ReLU] (1->32->64->64) -> GlobalAveragePool -> Flatten -> Linear(64,5)",
    ),
}


# --------------------------------------------------------------------------- training


def set_seeds(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    seed: int,
    batch_size: int = 64,
) -> None:
    set_seeds(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2:  # BatchNorm needs >1 sample
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


# --------------------------------------------------------------------------- export


def _inline_initializer_identities(model: onnx.ModelProto) -> None:
    """The legacy exporter de-duplicates equal initializers via Identity nodes; undo that."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            graph.initializer.append(t)
            inits[t.name] = t
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _rename_folded_initializers(m: onnx.ModelProto, model: nn.Module) -> None:
    """Give Conv weights that constant folding produced (``onnx::Conv_123``) module-based names.

    Graph Conv nodes appear in the same order as the torch Conv2d modules run, which for
    these models is definition order.
    """
    graph = m.graph
    conv_names = [n for n, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    conv_nodes = [n for n in graph.node if n.op_type == "Conv"]
    assert len(conv_names) == len(conv_nodes), (conv_names, len(conv_nodes))
    used = {t.name for t in graph.initializer}
    rename = {}
    for mod_name, node in zip(conv_names, conv_nodes, strict=True):
        for j, suffix in ((1, "weight"), (2, "bias")):
            if j < len(node.input) and node.input[j].startswith("onnx::"):
                new = f"{mod_name}.{suffix}"
                assert new not in used, new
                rename[node.input[j]] = new
                used.add(new)
    for t in graph.initializer:
        t.name = rename.get(t.name, t.name)
    for node in graph.node:
        for k, name in enumerate(node.input):
            node.input[k] = rename.get(name, name)


def export_onnx(model: nn.Module, spec: dict, path: Path) -> onnx.ModelProto:
    model.eval()
    dummy = torch.zeros(2, 1, 8, 8)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}},
            export_params=True,
            training=torch.onnx.TrainingMode.EVAL,
            # Constant folding is what folds BatchNorm into Conv in eval mode.
            do_constant_folding=not spec["keep_bn"],
        )
    m = onnx.load_from_string(buf.getvalue())
    _inline_initializer_identities(m)
    _rename_folded_initializers(m, model)
    m.doc_string = spec["doc"]
    m.producer_name = "pytorch"
    m.producer_version = torch.__version__.split("+")[0]
    m.graph.name = path.stem
    for node in m.graph.node:
        node.doc_string = ""
    del m.metadata_props[:]
    data = m.SerializeToString(deterministic=True)
    path.write_bytes(data)
    return m


# --------------------------------------------------------------------------- verify


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def verify(
    path: Path, model: nn.Module, spec: dict, x_test: np.ndarray, y_test: np.ndarray
) -> dict:
    onnx.checker.check_model(str(path), full_check=True)
    m = onnx.load(str(path))
    ops = Counter(n.op_type for n in m.graph.node)
    size = path.stat().st_size
    assert size < MAX_FILE_BYTES, f"{path.name}: {size} bytes >= {MAX_FILE_BYTES}"
    assert [i.name for i in m.graph.input] == [INPUT_NAME], m.graph.input
    assert [o.name for o in m.graph.output] == [OUTPUT_NAME], m.graph.output
    in_dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert in_dims == [BATCH_DIM, 1, 8, 8], in_dims
    assert out_dims == [BATCH_DIM, spec["num_classes"]], out_dims
    if spec["keep_bn"]:
        assert ops["BatchNormalization"] == 3, ops
    if spec["cls"] is DigitsResNet:
        assert ops["Add"] >= 4, ops

    sess = ort_session(path)
    got = sess.run([OUTPUT_NAME], {INPUT_NAME: x_test})[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(x_test)).numpy()
    diff = float(np.max(np.abs(got - ref)))
    assert got.shape == (len(x_test), spec["num_classes"]) and got.dtype == np.float32
    assert diff < 1e-4, f"{path.name}: max |onnx - torch| = {diff}"
    # batch-size 1 also works (symbolic batch dim)
    one = sess.run([OUTPUT_NAME], {INPUT_NAME: x_test[:1]})[0]
    assert one.shape == (1, spec["num_classes"])
    acc = float(np.mean(got.argmax(1) == y_test))
    init_elems = int(sum(np.prod(t.dims) for t in m.graph.initializer))
    return {
        "ops": dict(sorted(ops.items())),
        "size": size,
        "init_elems": init_elems,
        "max_abs_diff": diff,
        "accuracy": acc,
    }


# --------------------------------------------------------------------------- main


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: this script's folder)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for training (default 1; other values may change the weights)",
    )
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    splits = load_splits()
    x_tr, y_tr = splits["train"]
    x_te, y_te = splits["test"]
    x_ca, y_ca = splits["calib"]
    save_npz_deterministic(out / "digits_calib.npz", image=x_ca, labels=y_ca)
    save_npz_deterministic(out / "digits_test.npz", image=x_te, labels=y_te)
    # round-trip check of what we ship
    with np.load(out / "digits_test.npz") as z:
        assert z["image"].dtype == np.float32 and z["image"].shape == (N_TEST, 1, 8, 8)
        assert z["labels"].dtype == np.int64 and np.array_equal(z["labels"], y_te)
        x_te_file, y_te_file = z["image"], z["labels"]

    sub = y_tr < 5
    train_sets = {
        "digits_mlp": (x_tr, y_tr, "digits train split, all 10 classes"),
        "digits_cnn": (x_tr, y_tr, "digits train split, all 10 classes"),
        "digits_resnet": (x_tr, y_tr, "digits train split, all 10 classes"),
        "digits_cnn04": (x_tr[sub], y_tr[sub], "digits train split, digits 0-4 only (5 classes)"),
    }

    manifest_models = {}
    for i, (name, spec) in enumerate(SPECS.items()):
        t1 = time.perf_counter()
        x, y, trained_on = train_sets[name]
        set_seeds(SEED + 100 * i)
        model = spec["cls"](num_classes=spec["num_classes"])
        train(model, x, y, epochs=spec["epochs"], lr=spec["lr"], seed=SEED + 100 * i)
        path = out / f"{name}.onnx"
        export_onnx(model, spec, path)
        if spec["num_classes"] == 10:
            xe, ye, eval_on = x_te_file, y_te_file, "digits_test.npz (all 400 samples)"
        else:
            te_sub = y_te_file < spec["num_classes"]
            xe, ye = x_te_file[te_sub], y_te_file[te_sub]
            eval_on = f"digits_test.npz samples with labels 0-{spec['num_classes'] - 1} ({int(te_sub.sum())} samples)"
        res = verify(path, model, spec, xe, ye)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"{name:14s} acc={res['accuracy']:.4f} params={n_params:7d} size={res['size']:7d} B "
            f"maxdiff={res['max_abs_diff']:.2e} ops={res['ops']} ({time.perf_counter() - t1:.1f}s)",
            flush=True,
        )
        manifest_models[name] = {
            "file": path.name,
            "doc": spec["doc"],
            "architecture": spec["arch"],
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [BATCH_DIM, 1, 8, 8]},
            "output": {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "shape": [BATCH_DIM, spec["num_classes"]],
            },
            "num_classes": spec["num_classes"],
            "param_count": n_params,
            "onnx_initializer_elements": res["init_elems"],
            "file_size": res["size"],
            "sha256": sha256(path),
            "opset": OPSET,
            "ops": res["ops"],
            "test_accuracy": round(res["accuracy"], 4),
            "evaluated_on": eval_on,
            "trained_on": f"{trained_on}, {len(y)} samples",
            "training": f"Adam lr={spec['lr']} cosine schedule, batch 64, {spec['epochs']} epochs, seed {SEED + 100 * i}",
        }

    manifest = {
        "dataset": "scikit-learn load_digits (8x8 grayscale, pixel/16.0), stratified split seed "
        f"{SEED}: train {len(y_tr)} (not shipped), calib {len(y_ca)}, test {len(y_te)}",
        "data": {
            fname: {
                "file": fname,
                "arrays": {"image": ["float32", [n, 1, 8, 8]], "labels": ["int64", [n]]},
                "samples": n,
                "file_size": (out / fname).stat().st_size,
                "sha256": sha256(out / fname),
            }
            for fname, n in (("digits_calib.npz", len(y_ca)), ("digits_test.npz", len(y_te)))
        },
        "models": manifest_models,
        "built_with": {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
