"""Transfer learning benchmark: the digits CNN trained on 0-4 adapted to all ten digits.

For each number of labelled samples, ``onnxopt.adapt`` refits the head of
``models/digits_cnn04.onnx`` (``holdout=0``: every labelled sample is used for the fit, l2
by 5-fold CV) and the adapted model is scored on all 400 samples of
``models/digits_test.npz``, which no fit ever sees.

Labelled samples: stratified subsets of ``models/digits_calib.npz`` (400 samples) for
n <= 400, each drawn ``--draws`` times with different seeds (mean / min / max reported).
For n = 500 the 400 calibration samples are joined by 100 samples of the digits *train*
split (stratified, seeded), rebuilt here from scikit-learn's bundled digits exactly as
``models/build.py`` splits them; the script checks that the rebuilt calib and test splits
equal the shipped .npz files, so the extra samples are provably not test samples.  (The
0-4 CNN was trained on the train split's digits 0-4; its digits 5-9 were never seen.)

Rows: the default cut (the input of the final Gemm), an earlier cut (``--features`` at the
second ReLU, mean-pooled), and a no-transfer baseline: the same logistic head on the raw
pixels (``--features image --pool flatten``).

Times: ``fit`` is the numpy head fit including cross-validation; ``total`` the whole
``adapt`` call (checks, feature extraction, fit, verification).  Finally the n = 500 run is
repeated and the two serialized models compared byte for byte.

    python benchmarks/adapt.py [--draws 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from onnxopt.adapt.api import adapt, evaluate
from onnxopt.data import Dataset
from onnxopt.linear import stratified_split

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BASE = MODELS / "digits_cnn04.onnx"
LAYER2 = "/features/features.1/features.1.2/Relu_output_0"


def _npz(name):
    with np.load(MODELS / name) as z:
        return z["image"], z["labels"]


def train_split():
    """The digits train split of models/build.py (needs scikit-learn), checked against
    the shipped calib and test files; None without scikit-learn (the n = 500 rows are then
    skipped)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        return None

    digits = load_digits()
    x = (digits.images.astype(np.float64) / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=400, stratify=y, random_state=0)
    x_train, x_calib, y_train, y_calib = train_test_split(x_rest, y_rest, test_size=400, stratify=y_rest, random_state=1)
    for name, (xs, ys) in (("digits_calib.npz", (x_calib, y_calib)), ("digits_test.npz", (x_test, y_test))):
        xf, yf = _npz(name)
        if not (np.array_equal(xf, xs) and np.array_equal(yf, ys)):
            sys.exit(f"the rebuilt split does not match models/{name}; cannot vouch for the n=500 row")
    return x_train, y_train


def subset(x, y, n, seed):
    """A stratified subset of about n samples."""
    if n >= len(y):
        return x, y
    _, pick = stratified_split(y, n / len(y), seed)
    return x[pick], y[pick]


def run(x, y, label, test, **kw):
    res = adapt(BASE, Dataset(label, arrays={"image": x}, labels=y), holdout=0.0, **kw)
    acc = evaluate(res.model, test).accuracy
    return res, acc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=3, help="subsets drawn per size below 400 (default 3)")
    args = ap.parse_args(argv)

    xc, yc = _npz("digits_calib.npz")
    xt, yt = _npz("digits_test.npz")
    test = Dataset("digits_test.npz", arrays={"image": xt}, labels=yt)
    split = train_split()
    if split is None:
        print("scikit-learn is not installed (pip install -e '.[bench]'): the n = 500 rows are skipped", file=sys.stderr)
        x500, y500 = xc, yc
    else:
        x_extra, y_extra = subset(*split, 100, seed=0)
        x500, y500 = np.concatenate([xc, x_extra]), np.concatenate([yc, y_extra])
    n_values = (50, 100, 200, 400) + ((500,) if split is not None else ())

    base = evaluate(BASE, test)
    print(
        f"input model digits_cnn04 (5 classes) on digits_test: {base.accuracy:.2f}% of 400; "
        f"{base.in_label_space['accuracy']:.2f}% of the {base.in_label_space['samples']} samples labelled 0-4"
    )
    print()
    rows = []
    configs = [
        ("logistic", None, "mean"),
        ("linear", None, "mean"),
        ("logistic", LAYER2, "mean"),
        ("logistic", "image", "flatten"),  # baseline: no transfer, the raw pixels
    ]
    for head, features, pool in configs:
        for n in n_values:
            draws = [(xc, yc)] if n == 400 else ([(x500, y500)] if n == 500 else [subset(xc, yc, n, seed=s) for s in range(args.draws)])
            accs, fits, totals, l2s, sizes = [], [], [], [], []
            for x, y in draws:
                res, acc = run(x, y, f"n={n}", test, head=head, features=features, pool=pool)
                accs.append(acc)
                fits.append(res.report["seconds"]["fit"])
                totals.append(res.report["seconds"]["total"])
                l2s.append(res.report["head"]["l2"])
                sizes.append(len(y))
            feat = {None: "fc input [64]", LAYER2: "layer-2 ReLU, mean-pooled [64]", "image": "raw pixels, flattened [64]"}[features]
            rows.append(
                (
                    head,
                    feat,
                    f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}-{max(sizes)}",
                    len(draws),
                    statistics.mean(accs),
                    min(accs),
                    max(accs),
                    ",".join(f"{v:g}" for v in sorted(set(l2s))),
                    statistics.median(fits),
                    statistics.median(totals),
                )
            )
            print(f"  {head:8s} {feat:31s} n={n:3d}: {statistics.mean(accs):.2f}% ({len(draws)} draw(s)), fit {statistics.median(fits):.2f} s", file=sys.stderr)

    header = ["head", "features", "labelled", "draws", "test acc % (mean)", "min", "max", "l2 (CV)", "fit s (median)", "total s"]
    table = [header] + [[r[0], r[1], r[2], str(r[3]), f"{r[4]:.2f}", f"{r[5]:.2f}", f"{r[6]:.2f}", r[7], f"{r[8]:.2f}", f"{r[9]:.2f}"] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")

    # the target: >= 90% on all ten digits from <= 500 labelled samples, fitted in < 10 s
    print()
    for head, features, _pool in configs:
        feat = {None: "fc input [64]", LAYER2: "layer-2 ReLU, mean-pooled [64]", "image": "raw pixels, flattened [64]"}[features]
        met = [r for r in rows if r[0] == head and r[1] == feat and r[4] >= 90.0 and r[8] < 10.0]
        first = f"met from {met[0][2]} labelled samples ({met[0][4]:.2f}%, fit {met[0][8]:.2f} s)" if met else "NOT met"
        print(f"target (>= 90% on ten digits, <= 500 samples, fit < 10 s), {head} on {feat}: {first}")

    n_last = len(y500)
    a = adapt(BASE, Dataset(f"n={n_last}", arrays={"image": x500}, labels=y500), holdout=0.0).model
    b = adapt(BASE, Dataset(f"n={n_last}", arrays={"image": x500}, labels=y500), holdout=0.0).model
    same = a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    print(f"re-run of the n={n_last} logistic fit: byte-identical model: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
