"""Which validation split ranks recipes as the test split does? (issue #9, part 2)

    PYTHONPATH=src PNEUMOSCAN_DATA=... python benchmarks/gap_val.py

Reads the cache of benchmarks/gap_cache.py. Candidate validation splits are carved from the
train folder only (file names, patient numbers, train images; no test image defines them):

  random    the shipped carve: 10% of patients, StratifiedGroupKFold, seed 42 (and seed 0)
  id-low    per patient-id family (person, IM-, NORMAL2-IM-), the lowest 10% patient numbers
  id-high   per patient-id family, the highest 10% patient numbers
  atypical  per class, the 10% of patients farthest from the train-folder feature centroid
  style-cluster  whole k-means clusters of low-level (blocks.4) features, ~10% of images

Recipes are frozen-feature probes (logistic regression on ImageNet EfficientNet-Lite0
features, class-balanced): preprocessing raw / eq (histogram equalisation) / crop (central
80%) where cached, layer blocks.4 / blocks.5 / bn2 / blocks.5+bn2, C 0.003 / 0.03 / 0.3;
plus bn2 reduced to 32 principal components, and the 14 image statistics of gap_cause.
For each candidate the probe is fitted on the rest of the train folder and scored on the
candidate; each recipe's test figures come from the probe fitted on the random carve's train
part (the shipped procedure). Printed: per-recipe table, then Spearman correlations between
each candidate's figures and test's.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
from gap_cache import load_cache
from gap_cause import STATS, image_stats, patient_number
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from pneumoscan.data import scan, split_train_val
from pneumoscan.evaluation.metrics import auroc

FRACTION = 0.1
SENS = 0.98


def spec_at_sens(y: np.ndarray, p: np.ndarray, sens: float = SENS) -> float:
    """Specificity at the highest threshold keeping sensitivity >= sens (on the same data)."""
    t = np.sort(p[y == 1])[int(np.floor((1 - sens) * (y == 1).sum()))]
    return float((p[y == 0] < t).mean())


def id_split(cache: dict, low: bool) -> np.ndarray:
    """Mask of train-folder images whose patient number is in the lowest (highest) FRACTION
    of its file-name family's patients."""
    # family = the patient id without its number (person, IM-, NORMAL2-IM-): a person's
    # bacteria and virus images stay on one side
    fam = np.array([re.sub(r"\d+$", "", x) for x in cache["patient"]])
    num = np.array([patient_number(x) for x in cache["patient"]])
    trn = cache["split"] == "train"
    out = np.zeros(len(fam), bool)
    for f in set(fam[trn]):
        m = trn & (fam == f)
        ids = np.unique(num[m])
        k = max(1, round(FRACTION * len(ids)))
        keep = ids[:k] if low else ids[-k:]
        out |= m & np.isin(num, keep)
    return out


def atypical_split(cache: dict) -> np.ndarray:
    """Per class, the train-folder patients whose images lie farthest (mean squared z-score
    of the top 50 principal components of ImageNet bn2 features) from the class centroid."""
    x = cache["imagenet_raw_bn2"]
    trn = cache["split"] == "train"
    out = np.zeros(len(x), bool)
    for lab in ("NORMAL", "PNEUMONIA"):
        m = trn & (cache["label"] == lab)
        z = StandardScaler().fit_transform(x[m])
        u, s, _ = np.linalg.svd(z - z.mean(0), full_matrices=False)
        pcs = u[:, :50] * np.sqrt(len(z))  # unit-variance component scores
        d = (pcs ** 2).mean(1)
        pats = cache["patient"][m]
        per = {q: d[pats == q].mean() for q in np.unique(pats)}
        order = sorted(per, key=per.get, reverse=True)
        far = set(order[:max(1, round(FRACTION * len(order)))])
        out[np.flatnonzero(m)[[q in far for q in pats]]] = True
    return out


def candidates(cache: dict) -> dict[str, np.ndarray]:
    recs = scan(os.environ["PNEUMOSCAN_DATA"])
    out = {}
    for seed in (42, 0):
        _, val = split_train_val(recs, FRACTION, seed)
        out[f"random-{seed}"] = np.isin(cache["path"], [r.path for r in val])
    out["id-low"] = id_split(cache, low=True)
    out["id-high"] = id_split(cache, low=False)
    out["atypical"] = atypical_split(cache)
    out["style-cluster"] = cluster_split(cache)
    return out


def cluster_split(cache: dict, k: int = 8, seed: int = 0) -> np.ndarray:
    """Whole clusters of acquisition style (k-means on low-level blocks.4 ImageNet features of
    the train folder), taken in a seeded random order until 10% of the images are held out;
    each patient goes with the cluster of most of its images."""
    from sklearn.cluster import KMeans

    trn = np.flatnonzero(cache["split"] == "train")
    z = StandardScaler().fit_transform(cache["imagenet_raw_b4"][trn])
    lab = KMeans(k, n_init=4, random_state=seed).fit_predict(z)
    pats = cache["patient"][trn]
    major = {q: np.bincount(lab[pats == q]).argmax() for q in np.unique(pats)}
    cl = np.array([major[q] for q in pats])
    out = np.zeros(len(cache["split"]), bool)
    for c in np.random.default_rng(seed).permutation(k):
        if out.sum() >= FRACTION * len(trn):
            break
        out[trn[cl == c]] = True
    return out


def recipes(cache: dict) -> dict[str, np.ndarray]:
    out = {}
    for v in ("raw", "eq", "crop"):
        if f"imagenet_{v}_bn2" not in cache:  # a variant the cache does not hold yet
            continue
        for layer in ("b4", "b5", "bn2", "b5+bn2"):
            x = np.concatenate([cache[f"imagenet_{v}_{k}"] for k in layer.split("+")], 1)
            for c in (0.003, 0.03, 0.3):
                out[f"{v} {layer} C={c:g}"] = (x, c)
    # Recipes far from those: fewer features, and image statistics alone.
    from sklearn.decomposition import PCA

    trn = cache["split"] == "train"
    pca = PCA(32, random_state=0).fit(cache["imagenet_raw_bn2"][trn])
    out["raw bn2 pca32 C=0.03"] = (pca.transform(cache["imagenet_raw_bn2"]), 0.03)
    st = image_stats(cache["images"], cache["path"])
    out["image stats C=1"] = (np.stack([st[k] for k in STATS], 1), 1.0)
    return out


def fit_score(x: np.ndarray, y: np.ndarray, fit: np.ndarray, score: list[np.ndarray],
              c: float) -> list[np.ndarray]:
    sc = StandardScaler().fit(x[fit])
    clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    clf.fit(sc.transform(x[fit]), y[fit])
    return [clf.predict_proba(sc.transform(x[m]))[:, 1] for m in score]


def main() -> None:
    cache = load_cache()
    y = (cache["label"] == "PNEUMONIA").astype(int)
    trn = cache["split"] == "train"
    test = cache["split"] == "test"
    cands = candidates(cache)
    for name, m in cands.items():
        print(f"{name:10s} n={m.sum():4d} normals {(m & (y == 0)).sum():4d} "
              f"patients {len(np.unique(cache['patient'][m]))}")
    rows = []
    for rname, (x, c) in recipes(cache).items():
        row = {"recipe": rname}
        for cname, v in cands.items():
            if cname == "random-42":
                pv, pt = fit_score(x, y, trn & ~v, [v, test], c)
                row["test auroc"] = auroc(y[test], pt)
                row["test spec98"] = spec_at_sens(y[test], pt)
            else:
                (pv,) = fit_score(x, y, trn & ~v, [v], c)
            row[f"{cname} auroc"] = auroc(y[v], pv)
            row[f"{cname} spec98"] = spec_at_sens(y[v], pv)
        rows.append(row)
        print(" | ".join(f"{k} {v:.4f}" if isinstance(v, float) else v for k, v in row.items()),
              flush=True)
    print("\nSpearman correlation with test across", len(rows), "recipes")
    for cname in cands:
        r_a = spearmanr([r[f"{cname} auroc"] for r in rows], [r["test auroc"] for r in rows])[0]
        r_s = spearmanr([r[f"{cname} spec98"] for r in rows], [r["test spec98"] for r in rows])[0]
        mean_a = np.mean([r[f"{cname} auroc"] for r in rows])
        mean_s = np.mean([r[f"{cname} spec98"] for r in rows])
        print(f"  {cname:10s} AUROC rho {r_a:+.3f}  spec@98 rho {r_s:+.3f}   "
              f"(mean AUROC {mean_a:.4f}, mean spec@98 {mean_s:.3f})")
    print(f"  {'test':10s} mean AUROC {np.mean([r['test auroc'] for r in rows]):.4f}, "
          f"mean spec@98 {np.mean([r['test spec98'] for r in rows]):.3f}")
    print("\nTrained runs (fitted on their own random carve, so scored on it and test only)")
    for key in sorted(k for k in cache if k.startswith("logit_")):
        run = key[len("logit_"):]
        z = cache[key] / float(cache[f"temp_{run}"])
        q = 1 / (1 + np.exp(-z.astype(np.float64)))
        held = ~np.isnan(q) & trn
        print(f"  {run:10s} own val n={held.sum()} AUROC {auroc(y[held], q[held]):.4f} "
              f"spec@98 {spec_at_sens(y[held], q[held]):.3f} | test AUROC "
              f"{auroc(y[test], q[test]):.4f} spec@98 {spec_at_sens(y[test], q[test]):.3f}")
    np.save(os.environ.get("GAP_ROWS", "/tmp/gap_rows.npy"), np.array(rows, dtype=object),
            allow_pickle=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
