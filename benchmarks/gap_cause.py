"""What distinguishes the test normals the shipped model calls sick? (issue #9, part 1)

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/gap_cause.py [--sheet out.png]

Reads the cache of benchmarks/gap_cache.py (run that first). Prints, per group of images
(train-folder normals split by the shipped model's train/val carve, test normals the model
gets right, test normals it calls sick at the stored threshold, pneumonia), image statistics
that survive the 224 px squash, the file-name families and patient-id ranges, a domain
classifier (how well train-folder and test normals can be told apart, and which), and a
nearest-neighbour check of the noisy-label hypothesis.
"""

from __future__ import annotations

import argparse
import os
import re

import numpy as np
from gap_cache import load_cache
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pneumoscan.data import name_family, parse_name, scan, split_train_val
from pneumoscan.evaluation.metrics import auroc

STATS = ("mean", "std", "p01", "p99", "border", "border_lr", "border_tb", "black",
         "white", "corner_white", "sharp", "body_width", "lung_dark", "file_kb")


def image_stats(images: np.ndarray, paths: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics of (N, S, S) uint8 images that survive the squash to S px."""
    a = images.astype(np.float32)
    n, s, _ = a.shape
    b = s // 20  # a 5% frame
    flat = a.reshape(n, -1)
    lr = np.concatenate([a[:, :, :b], a[:, :, -b:]], axis=2).reshape(n, -1)
    tb = np.concatenate([a[:, :b, :], a[:, -b:, :]], axis=1).reshape(n, -1)
    c = s // 5  # the four corners, where R/L markers and text sit
    corners = np.concatenate([a[:, :c, :c], a[:, :c, -c:], a[:, -c:, :c], a[:, -c:, -c:]],
                             axis=1).reshape(n, -1)
    lap = (a[:, 1:-1, 1:-1] * 4 - a[:, :-2, 1:-1] - a[:, 2:, 1:-1] - a[:, 1:-1, :-2]
           - a[:, 1:-1, 2:])
    # Body width: share of columns of the middle rows brighter than the image's median.
    mid = a[:, s // 3: 2 * s // 3, :].mean(axis=1)
    body = (mid > np.median(flat, axis=1, keepdims=True)).mean(axis=1)
    # Lung field: share of dark pixels (below the 30th percentile) inside the central box.
    centre = a[:, s // 5: 4 * s // 5, s // 6: 5 * s // 6].reshape(n, -1)
    lung = (centre < np.percentile(flat, 30, axis=1, keepdims=True)).mean(axis=1)
    return {
        "mean": flat.mean(1), "std": flat.std(1),
        "p01": np.percentile(flat, 1, axis=1), "p99": np.percentile(flat, 99, axis=1),
        "border": np.concatenate([lr, tb], axis=1).mean(1),
        "border_lr": lr.mean(1), "border_tb": tb.mean(1),
        "black": (flat < 10).mean(1), "white": (flat > 245).mean(1),
        "corner_white": (corners > 230).mean(1),
        "sharp": lap.reshape(n, -1).var(1), "body_width": body, "lung_dark": lung,
        "file_kb": np.array([os.path.getsize(p) / 1024 for p in paths]),
    }


def family(name: str) -> str:
    """name_family, with the pneumonias split by etiology (person-bacteria, person-virus)."""
    f = name_family(name)
    return f"person-{parse_name(name, 'PNEUMONIA')[1]}" if f == "person" else f


def patient_number(patient: str) -> int:
    return int(re.findall(r"\d+", patient)[-1])


def groups(cache: dict) -> dict[str, np.ndarray]:
    """Boolean masks of the analysis groups, from the shipped model's carve (seed 42, 10%)."""
    recs = scan(os.environ["PNEUMOSCAN_DATA"])
    assert [r.path for r in recs] == list(cache["path"]), "cache is of another dataset"
    _, val = split_train_val(recs, 0.1, 42)
    in_val = np.isin(cache["path"], [r.path for r in val])
    split, label = cache["split"], cache["label"]
    t = float(cache["temp_shipped"])
    p = 1 / (1 + np.exp(-cache["logit_shipped"] / t))
    fp = (split == "test") & (label == "NORMAL") & (p >= float(cache["thr_shipped"]))
    return {
        "train N": (split == "train") & (label == "NORMAL") & ~in_val,
        "val N": (split == "train") & (label == "NORMAL") & in_val,
        "test N ok": (split == "test") & (label == "NORMAL") & ~fp,
        "test N FP": fp,
        "train P": (split == "train") & (label == "PNEUMONIA") & ~in_val,
        "test P": (split == "test") & (label == "PNEUMONIA"),
    }, p, in_val


def domain_auc(x: np.ndarray, y: np.ndarray, c: float = 0.1) -> np.ndarray:
    """Out-of-fold P(test) of a standardised logistic regression: train-vs-test normals."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    return cross_val_predict(clf, x, y, cv=cv, method="predict_proba")[:, 1]


def contact_sheet(images: np.ndarray, titles: list[str], out: str, cols: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.75))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, t in zip(axes.ravel(), images, titles):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(t, fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sheet", default=None, help="write contact sheets to this prefix")
    args = ap.parse_args()
    cache = load_cache()
    masks, p, in_val = groups(cache)
    names = np.array([os.path.basename(x) for x in cache["path"]])
    st = image_stats(cache["images"], cache["path"])

    print(f"== medians per group (shipped model, threshold {float(cache['thr_shipped']):.4f})")
    print(f"{'stat':13s}" + "".join(f"{g:>11s}" for g in masks)
          + "   AUROC FP-vs-ok  test-vs-train N")
    testn = masks["test N ok"] | masks["test N FP"]
    for k in STATS:
        med = [np.median(st[k][m]) for m in masks.values()]
        a_fp = auroc(masks["test N FP"][testn], st[k][testn])
        trn = masks["train N"] | masks["val N"] | testn
        a_dom = auroc(testn[trn], st[k][trn])
        print(f"{k:13s}" + "".join(f"{v:11.3f}" for v in med) + f"   {a_fp:6.3f}  {a_dom:6.3f}")
    print("\n== mean shipped-model probability, by file-name family")
    for g, m in masks.items():
        if np.isnan(p[m]).all():  # train images: the shipped model was fitted on them
            continue
        fams = {}
        for f in sorted(set(family(n) for n in names[m])):
            mm = m & np.array([family(n) == f for n in names])
            fams[f] = f"{p[mm].mean():.3f} (n={mm.sum()})"
        print(f"{g:10s}", fams)
    print("\n== patient-number ranges by family (train folder, test folder)")
    nums = np.array([patient_number(x) for x in cache["patient"]])
    fam = np.array([family(n) for n in names])
    for f in ("IM", "NORMAL2-IM", "person-bacteria", "person-virus"):
        for sp in ("train", "test"):
            m = (fam == f) & (cache["split"] == sp)
            print(f"  {f:16s} {sp:5s} n={m.sum():5d} ids {nums[m].min()}-{nums[m].max()} "
                  f"median {np.median(nums[m]):.0f}")
    print("  test normals by patient-number block: n, called sick, mean p")
    for f, lo, hi in (("IM", 1, 49), ("IM", 50, 99), ("IM", 100, 149), ("NORMAL2-IM", 1, 99),
                      ("NORMAL2-IM", 100, 189), ("NORMAL2-IM", 190, 259),
                      ("NORMAL2-IM", 260, 399)):
        m = testn & (fam == f) & (nums >= lo) & (nums <= hi)
        print(f"    {f:10s} {lo:3d}-{hi:3d}: {m.sum():3d} {masks['test N FP'][m].sum():3d} "
              f"{p[m].mean():.2f}")
    print("  test normals called sick, by family:",
          {f: f"{(masks['test N FP'] & (fam == f)).sum()}/{(testn & (fam == f)).sum()}"
           for f in ("IM", "NORMAL2-IM")})

    print("\n== domain classifier: train-folder normals vs test normals (5-fold out-of-fold)")
    trn_n = (cache["split"] == "train") & (cache["label"] == "NORMAL")
    for fname, x in (("image stats", np.stack([st[k] for k in STATS], 1)),
                     ("ImageNet bn2 features", cache["imagenet_raw_bn2"]),
                     ("shipped-model bn2 features", cache["feat_shipped"])):
        # the shipped model's features exist for its carved val and test only
        pool = ~np.isnan(x).any(1) & (trn_n | testn)
        y = testn[pool].astype(int)
        q = domain_auc(x[pool], y)
        is_fp = masks["test N FP"][pool][y == 1]
        print(f"  {fname:28s} n={pool.sum()} AUROC {auroc(y, q):.3f}; P(test) of test FPs "
              f"{q[y == 1][is_fp].mean():.3f} vs test ok {q[y == 1][~is_fp].mean():.3f}; "
              f"corr(P(test), shipped p) over test N "
              f"{np.corrcoef(q[y == 1], p[pool][y == 1])[0, 1]:.3f}")
        # Which train normals look most like test? Their patient numbers.
        qt = q[y == 0]
        idx = np.flatnonzero(pool)[y == 0]
        for f in ("IM", "NORMAL2-IM"):
            m = fam[idx] == f
            r = np.corrcoef(nums[idx][m], qt[m])[0, 1]
            lo = nums[idx][m] <= np.percentile(nums[idx][m], 20)
            print(f"    train {f:10s}: corr(patient number, P(test)) {r:+.3f}; "
                  f"mean P(test) lowest-20% ids {qt[m][lo].mean():.3f} vs rest "
                  f"{qt[m][~lo].mean():.3f}")

    print("\n== noisy-label check: 10 nearest train-folder neighbours (ImageNet bn2, cosine)")
    x = cache["imagenet_raw_bn2"]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    trn = cache["split"] == "train"
    ytr = (cache["label"][trn] == "PNEUMONIA").astype(int)
    oof = probe_oof(cache["imagenet_raw_bn2"][trn], ytr, cache["patient"][trn])
    for g in ("test N ok", "test N FP"):
        sims = x[masks[g]] @ x[trn].T
        nn_idx = np.argsort(-sims, axis=1)[:, :10]
        frac_p = ytr[nn_idx].mean()
        # a pneumonia-labelled neighbour the probe itself doubts (out-of-fold p < 0.5)
        doubt = ((ytr[nn_idx] == 1) & (oof[nn_idx] < 0.5)).mean()
        print(f"  {g:10s} n={masks[g].sum():3d}: share of neighbours labelled pneumonia "
              f"{frac_p:.3f}; doubted pneumonia labels among neighbours {doubt:.3f}")
    print(f"  train pneumonia labels the probe doubts (OOF p < 0.5): "
          f"{((ytr == 1) & (oof < 0.5)).sum()} of {(ytr == 1).sum()}; train normals it "
          f"doubts (OOF p >= 0.5): {((ytr == 0) & (oof >= 0.5)).sum()} of {(ytr == 0).sum()}")

    if args.sheet:
        imgs = cache["images"]
        fps = np.flatnonzero(masks["test N FP"])
        fps = fps[np.argsort(-p[fps])]
        contact_sheet(imgs[fps[:48]], [f"{names[i][:18]} {p[i]:.2f}" for i in fps[:48]],
                      args.sheet + "_test_fp.png")
        ok = np.flatnonzero(masks["test N ok"])[:48]
        contact_sheet(imgs[ok], [f"{names[i][:18]} {p[i]:.2f}" for i in ok],
                      args.sheet + "_test_ok.png")
        rng = np.random.default_rng(0)
        tr = rng.choice(np.flatnonzero(masks["train N"]), 48, replace=False)
        contact_sheet(imgs[tr], [f"{names[i][:18]} {p[i]:.2f}" for i in tr],
                      args.sheet + "_train_n.png")


def probe_oof(x: np.ndarray, y: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Out-of-fold probability of the frozen-feature probe (5 patient-grouped folds)."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
    cv = StratifiedGroupKFold(5, shuffle=True, random_state=0)
    return cross_val_predict(clf, x, y, cv=cv, groups=patients, method="predict_proba")[:, 1]


if __name__ == "__main__":
    main()
