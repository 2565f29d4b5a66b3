"""MODEL_CARD.md generated from a report's metrics.json and the checkpoint: never typed by hand."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import writing_into
from ..models import weights as checkpoint

DISCLAIMER = ("**Not for clinical use.** pneumoscan is a research tool. Its output is not a "
              "diagnosis and must not guide the care of any patient.")

NAMES = {"auroc": "AUROC", "accuracy": "accuracy", "sensitivity": "sensitivity",
         "specificity": "specificity", "ppv": "PPV", "npv": "NPV", "f1": "F1"}


class ModelCardError(ValueError):
    """A metrics.json that cannot be read, or that holds no evaluation of the model."""


def _pick(metrics: dict, folder: Path) -> dict:
    """The entry of metrics.json that evaluated the weights in `folder`, matched by their
    checksum (the path a report shows is relative to where it was run)."""
    entries = metrics.get("models", [metrics])
    sha = checkpoint.file_sha256(folder / checkpoint.WEIGHTS)
    for m in entries:
        if m.get("provenance", {}).get("weights_sha256") == sha:
            return m
    shown = ", ".join(f"{m.get('provenance', {}).get('model', '?')} (weights sha256 "
                      f"{str(m.get('provenance', {}).get('weights_sha256'))[:12]}...)"
                      for m in entries)
    raise ModelCardError(f"metrics.json holds no evaluation of {folder} (weights sha256 "
                         f"{sha[:12]}...); it has: {shown}")


def read_metrics(path: str | Path) -> dict:
    """A report's metrics.json, or ModelCardError saying why it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise ModelCardError(f"--metrics {path}: no such file; write one with 'pneumoscan "
                             f"evaluate --model RUN --report DIR' (DIR/metrics.json)")
    try:
        metrics = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelCardError(f"--metrics {path}: not a metrics.json ({e})") from None
    if not isinstance(metrics, dict) or not ("headline" in metrics or "models" in metrics):
        raise ModelCardError(f"--metrics {path}: not the metrics.json of 'pneumoscan evaluate "
                             f"--report'")
    return metrics


def _marker(point: dict) -> str:
    if not point["stored"]:
        return ""
    return " **(stored)**" if point["name"] == "stored threshold" else " (= stored)"


def _ci(m: dict, key: str) -> str:
    c = m["ci"][key]
    return f"{c['value']:.3f} (95% CI {c['low']:.3f}-{c['high']:.3f})"


def _interval(c: dict) -> str:
    return f"{c['value']:.3f} (95% CI {c['low']:.3f}-{c['high']:.3f})"


def _output(ckpt: checkpoint.Checkpoint, temperature: float, threshold: float) -> str:
    if ckpt.binary:
        return (f"a pneumonia probability, temperature-scaled (T = {temperature:.4f}), and a "
                f"label at the stored threshold {threshold:.4f}")
    return (f"the probability of each of {', '.join(ckpt.labels)} (softmax, temperature-scaled,"
            f" T = {temperature:.4f}); the pneumonia probability 1 - P(NORMAL) and a label at "
            f"the stored threshold {threshold:.4f}; and the likelier etiology (the more "
            f"probable non-NORMAL class)")


def _multiclass(m: dict, ckpt: checkpoint.Checkpoint) -> str:
    """A K-class checkpoint's labels and its K-class figures, validation then evaluation."""
    if ckpt.binary or not m.get("multiclass"):
        return ""
    mc, val, split = m["multiclass"], ckpt.val_metrics, m["headline"]["split"]
    ci = mc["ci"]
    names = mc["confusion_labels"]

    def v(key):
        return f"{val[key]:.3f}" if isinstance(val.get(key), float) else "not recorded"

    per = "\n".join(f"| {n} | {mc['per_class'][n]['n']} | {_interval(ci['per_class'][n]['recall'])}"
                    f" | {_interval(ci['per_class'][n]['precision'])} |" for n in names)
    confusion = "\n".join(f"| {t} | " + " | ".join(map(str, row)) + " |"
                          for t, row in zip(names, mc["confusion"]))
    return f"""
### {len(names)} classes ({', '.join(names)})

Each image's class is the most probable label (argmax); the figures above are the pneumonia
decision (1 - P(NORMAL) at the stored threshold). Validation (the split the model was selected
on): accuracy {v('class_accuracy')}, macro AUROC {v('macro_auroc')}, bacterial vs viral accuracy
{v('bacterial_vs_viral_accuracy')}. On {split} (same patient bootstrap):

| metric | value |
|---|---|
| {len(names)}-class accuracy | {_interval(ci['class_accuracy'])} |
| macro AUROC (one vs rest) | {_interval(ci['macro_auroc'])} |
| bacterial vs viral accuracy (true pneumonias) | {_interval(ci['bacterial_vs_viral_accuracy'])} |

| class | images | recall | precision |
|---|---|---|---|
{per}

Confusion matrix (rows truth, columns argmax prediction):

| | {' | '.join(names)} |
|---|{'---|' * len(names)}
{confusion}
"""


def render_card(m: dict, ckpt: checkpoint.Checkpoint) -> str:
    h, prov, cal, err = m["headline"], m["provenance"], m["calibration"], m["errors"]
    cfg, val, prep = ckpt.config, ckpt.val_metrics, ckpt.preprocessing
    split = h["split"]
    rows = "\n".join(f"| {NAMES[k]} | {_ci(m, k)} |" for k in NAMES)
    ops = "\n".join(
        f"| {p['name']}{_marker(p)} | {p['threshold']:.4f} | "
        f"{p['val_sensitivity']:.3f} / {p['val_specificity']:.3f} | "
        f"{p['sensitivity']:.3f} / {p['specificity']:.3f} |" for p in m["operating_points"])
    etiology = "; ".join(f"{k}: {v['missed']} of {v['n']} missed ({v['miss_rate']:.1%}, 95% CI "
                         f"{v['low']:.1%}-{v['high']:.1%})"
                         for k, v in err["miss_rate_by_etiology"].items())
    fp_probs = [r["probability"] for r in err["false_positives"]]
    fp_line = (f"{h['fp']} of {h['fp'] + h['tn']} normal children are flagged (specificity "
               f"{_ci(m, 'specificity')}); the most confident false alarm scores "
               f"{max(fp_probs):.3f}." if fp_probs else "No false positives on this split.")
    etiology_use = ("does not distinguish bacterial from viral pneumonia" if ckpt.binary
                    else "gives a likelier etiology (bacterial or viral) that is no diagnosis "
                         "of the cause either")
    val_spec = val.get("specificity")
    shift = (f" Validation specificity is {val_spec:.3f} against {h['specificity']:.3f} on "
             f"{split}: the {split} split is shifted from the training distribution, so "
             f"validation figures overstate real-world performance." if val_spec else "")
    return f"""# Model card: pneumoscan `{ckpt.model_name}`

> {DISCLAIMER}

Generated by `pneumoscan model-card` from `metrics.json` of `pneumoscan evaluate --report`
(split `{split}`, {prov['date']}); every number below comes from that file or from the
checkpoint's `model.json`.

## Model

- Architecture: `{ckpt.model_name}`, {prep.input_size} px gray input repeated to
  {prep.channels} channels, normalised (x - {prep.mean}) / {prep.std}.{_storage(prep)}
- Checkpoint: `{prov['model']}`; weights sha256 `{prov['weights_sha256']}`; trained at git
  `{prov['trained_at_git_sha']}`; pneumoscan {prov['package_version']}.
- Labels: {', '.join(ckpt.labels)}.
- Output: {_output(ckpt, prov['temperature'], h['threshold'])}.

## Intended use

A **screening aid** for research on pediatric (ages 1-5) anterior-posterior chest X-rays: it
flags images that may show pneumonia so that a qualified reader looks at them first. It is
**not a diagnosis**, {etiology_use}, and is not validated
for adults, lateral views, other hospitals, scanners or populations.

## Training data and known biases

- Kermany et al. 2018 (CC BY 4.0): {prov['split_sizes'].get('train', '?')} train and
  {prov['split_sizes'].get('val', '?')} validation images (validation = {cfg.get('val_fraction')}
  of the train folder's patients, grouped by patient, seed {cfg.get('seed')}).
- **Single centre**: every image comes from Guangzhou Women and Children's Medical Center;
  one hospital's scanners, protocols and population.
- **Ages 1-5 only**; pneumonia is about three quarters of the training images.
- **Train/test shift**: the official test split differs from the train folder (specificity
  falls from validation to test, below).{shift}

## Evaluation ({split} split, {h['n']} images, threshold {h['threshold']:.4f})

95% intervals: percentile bootstrap over {m['ci']['n_groups']} patients,
{m['ci']['n_resamples']} resamples, seed {prov['bootstrap_seed']}.

| metric | value |
|---|---|
{rows}

Confusion at the stored threshold: TP {h['tp']}, FP {h['fp']}, TN {h['tn']}, FN {h['fn']}.
Calibration: ECE (15 bins) {cal['ece_before']:.4f} before and {cal['ece_after']:.4f} after
temperature scaling (T = {cal['temperature']:.4f}, fitted on validation).
{_multiclass(m, ckpt)}
## Operating point and how it was chosen

The stored threshold follows the rule "{prov.get('threshold_rule') or 'not recorded'}", applied
on the validation split only; the test split never chose anything. Alternatives, also chosen
on validation (sensitivity / specificity):

| rule | threshold | validation | {split} |
|---|---|---|---|
{ops}

## Decisions made after looking at test

The test split has been read for recipes R1-R8 (docs/experiments.md): each run was scored on
test once, after a decision made on validation. Decisions taken after a test look: reverting
the switch to R4 (its explanation check reads test-folder images); the design of the
acquisition-shift validation (motivated by docs/gap.md's study of why test differs); rule 3 of
round 3, written after R5's and R6's test figures were read (its amendment, written before R6
seed 1 had any figure, made the test suite's product checks gates, and no candidate passed them
all, so this model stayed); and rule 4 of round 4, written with the same knowledge (seven val
gates in one list; no R8 seed passed them, so both shipped models stayed; R8's test figures
were read after the verdict). Recipes are compared by that shift validation on val, with
rules committed before training (`pneumoscan evaluate --split val --shift`;
docs/robustness.md).

## Known failure modes (from the error analysis)

- Missed pneumonia: {h['fn']} false negative(s); {etiology or 'no pneumonia images'}.
- False alarms: {fp_line}
- Near-threshold scores move with the image decoder and resize path (full-size originals and
  their 224 px copies can land on different sides of the threshold).
- Framing: a tighter field of view makes healthy children look sick to the model. On the
  validation split, cropping 12% off each side (or stretching the image vertically by 1.25)
  flags most healthy children (`pneumoscan evaluate --split val --shift`; docs/robustness.md).
- Anything outside the training distribution (adults, other centres, non-AP views, images
  that are not chest X-rays) gets a score all the same: the model cannot say "I don't know".

## Disclaimer

{DISCLAIMER}
"""


def _storage(prep) -> str:
    if not prep.storage_quality:
        return ""
    return (f"\n- Inputs are stored once as a JPEG of quality {prep.storage_quality} after the "
            f"resize (as the training copies were), so a full-size original scores closer to its "
            f"224 px copy (docs/robustness.md).")


def write_model_card(model_path, metrics_path: str | Path, out: str | Path) -> Path:
    """Write the model card of `model_path` (None = shipped) from a report's metrics.json.

    Examples:
        >>> write_model_card(None, "reports/test/metrics.json", "MODEL_CARD.md")  # doctest: +SKIP
    """
    folder = checkpoint.resolve(model_path)
    _, ckpt = checkpoint.load(folder)
    m = _pick(read_metrics(metrics_path), folder)
    out = Path(out)
    text = render_card(m, ckpt)
    with writing_into(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return out
