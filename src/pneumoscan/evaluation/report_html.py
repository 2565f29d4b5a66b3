"""report.html: one self-contained page (inline CSS, PNGs embedded as base64), readable offline."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:2em}table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;
padding:.3em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{
text-align:left}tr.stored{background:#fff6d5;font-weight:bold}img{max-width:100%;
margin:.4em 0}.warn{background:#fde8e8;border-left:4px solid #c00;padding:.6em 1em}
.note{color:#555;font-size:.92em}"""

LABELS = {"auroc": "AUROC", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
          "specificity": "Specificity", "ppv": "PPV (precision)", "npv": "NPV", "f1": "F1",
          "tp": "TP", "fp": "FP", "tn": "TN", "fn": "FN"}


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _num(v, digits: int = 3) -> str:
    if isinstance(v, int):
        return str(v)
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def _table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f'<tr class="{c}">' + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>"
        for row, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><tr>{head}</tr>{body}</table>"


def _headline(m: dict) -> str:
    ci, h = m["ci"], m["headline"]
    digits = {k: 0 if k in ("tp", "fp", "tn", "fn") else 3 for k in LABELS}
    rows = [[LABELS[k], _num(ci[k]["value"], digits[k]),
             f"{_num(ci[k]['low'], digits[k])} - {_num(ci[k]['high'], digits[k])}"]
            for k in LABELS]
    return (f"<p>{h['n']} images of split <b>{escape(h['split'])}</b> at the stored threshold "
            f"<b>{h['threshold']:.4f}</b>. 95% intervals: percentile bootstrap, "
            f"{ci['n_resamples']} resamples of {ci['n_groups']} <b>patients</b> (not images), "
            f"seed {m['provenance']['bootstrap_seed']}.</p>"
            + _table(["metric", "value", "95% CI"], rows)
            + (f"<p class='warn'>{len(h['skipped'])} unreadable images were not scored: "
               + escape("; ".join(h["skipped"])) + "</p>" if h["skipped"] else ""))


def _interval(c: dict) -> str:
    return f"{_num(c['low'])} - {_num(c['high'])}"


def _multiclass(m: dict) -> str:
    """A K-class model: argmax accuracy, macro AUROC, bacterial vs viral accuracy, per-class
    recall / precision (patient-bootstrap intervals) and the K x K confusion matrix."""
    mc, ci = m["multiclass"], m["multiclass"]["ci"]
    names = mc["confusion_labels"]
    overall = [["Accuracy (argmax)", "class_accuracy"], ["Macro AUROC (one vs rest)",
               "macro_auroc"], ["Bacterial vs viral accuracy", "bacterial_vs_viral_accuracy"]]
    rows = [[title, _num(ci[key]["value"]), _interval(ci[key])] for title, key in overall]
    per = [[name, mc["per_class"][name]["n"], _num(ci["per_class"][name]["recall"]["value"]),
            _interval(ci["per_class"][name]["recall"]),
            _num(ci["per_class"][name]["precision"]["value"]),
            _interval(ci["per_class"][name]["precision"]), _num(mc["per_class"][name]["auroc"])]
           for name in names]
    confusion = [[f"true {t}", *row] for t, row in zip(names, mc["confusion"])]
    return (f"<p>The headline above is the pneumonia decision: 1 - P(NORMAL) at the stored "
            f"threshold. Here each image's class is the most probable of {', '.join(names)} "
            "(argmax), whatever that decision. Bacterial vs viral accuracy: among the "
            "true pneumonias, the likelier of the two pneumonia classes. 95% intervals: the "
            "same patient bootstrap as the headline.</p>"
            + _table(["metric", "value", "95% CI"], rows)
            + _table(["class", "images", "recall", "95% CI", "precision", "95% CI",
                      "AUROC (one vs rest)"], per)
            + "<p>Confusion matrix (rows: truth, columns: argmax prediction)</p>"
            + _table(["", *[f"predicted {n}" for n in names]], confusion))


def _operating_points(m: dict) -> str:
    rows = [[p["name"] + (" (= stored)" if p["stored"] and p["name"] != "stored threshold"
                          else ""), f"{p['threshold']:.4f}",
             _num(p["val_sensitivity"]), _num(p["val_specificity"]), _num(p["sensitivity"]),
             _num(p["specificity"])] for p in m["operating_points"]]
    split = m["headline"]["split"]
    return ("<p>Every threshold below is chosen on the carved <b>val</b> split (rebuilt from the "
            "checkpoint's seed and fraction), never on the evaluated split; the stored one is "
            "highlighted.</p>"
            + _table(["rule", "threshold", "val sens", "val spec", f"{split} sens",
                      f"{split} spec"], rows,
                     ["stored" if p["stored"] else "" for p in m["operating_points"]]))


def _calibration(m: dict, figs: dict) -> str:
    c = m["calibration"]
    origin = ("stored in the checkpoint and applied by predict" if c["stored_in_checkpoint"]
              else "fitted on val for this report only (run 'pneumoscan calibrate' to store it)")
    rows = [["val", _num(c["val_ece_before"], 4), _num(c["val_ece_after"], 4)],
            [m["headline"]["split"], _num(c["ece_before"], 4), _num(c["ece_after"], 4)]]
    return (f"<p>Temperature T = <b>{c['temperature']:.4f}</b>, fitted on val by minimising "
            f"the negative log-likelihood; {origin}. Expected calibration error over "
            f"{c['n_bins']} equal-width bins of the pneumonia probability:</p>"
            + _table(["split", "ECE before (T = 1)", "ECE after"], rows)
            + _img(figs["reliability"], "reliability diagrams"))


def _errors(m: dict, figs: dict) -> str:
    e, h = m["errors"], m["headline"]
    rates = [[k, v["n"], v["missed"], f"{v['miss_rate']:.3f}",
              f"{v['low']:.3f} - {v['high']:.3f}"] for k, v in e["miss_rate_by_etiology"].items()]
    parts = [_img(figs["confusion"], "confusion matrix"),
             "<h3>Miss rate by etiology</h3>",
             _table(["etiology", "pneumonia images", "missed", "miss rate", "95% CI (Wilson)"],
                    rates),
             f"<h3>Every false negative ({len(e['false_negatives'])}), most confident miss "
             "first</h3>"]
    parts.append(_img(figs["false_negatives"], "false negatives")
                 if "false_negatives" in figs else "<p>None.</p>")
    parts.append(f"<h3>The most confident false positives (of {h['fp']})</h3>")
    parts.append(_img(figs["false_positives"], "false positives")
                 if "false_positives" in figs else "<p>None.</p>")
    parts.append("<h3>Sample predictions (random, seeded)</h3><p class='note'>Title: file, "
                 "truth and pneumonia probability; green = right at the stored threshold, "
                 "red = wrong.</p>")
    parts.append(_img(figs["samples"], "sample predictions"))
    return "".join(parts)


def _provenance(m: dict) -> str:
    rows = [[k, escape(str(v))] for k, v in m["provenance"].items()]
    return _table(["item", "value"], rows)


def _model_section(m: dict, figs: dict, title: str) -> str:
    curves = _img(figs["roc"], "ROC curve") + _img(figs["pr"], "precision-recall curve")
    if "training_curves" in figs:
        curves += ("<h3>Training curves (train vs validation)</h3>"
                   + _img(figs["training_curves"], "training curves"))
    else:
        curves += "<p class='note'>No history.csv beside this model: no training curves.</p>"
    classes = (f"<h2 id='multiclass'>{escape(title)}1b. {len(m['labels'])} classes</h2>"
               + _multiclass(m) if m.get("multiclass") else "")
    return (f"<h2 id='headline'>{escape(title)}1. Headline at the stored threshold</h2>"
            + _headline(m) + classes
            + f"<h2 id='operating-points'>{escape(title)}2. Operating points</h2>"
            + _operating_points(m)
            + f"<h2 id='curves'>{escape(title)}3. Curves</h2>" + curves
            + f"<h2 id='calibration'>{escape(title)}4. Calibration</h2>" + _calibration(m, figs)
            + f"<h2 id='errors'>{escape(title)}5. Error analysis</h2>" + _errors(m, figs)
            + f"<h2 id='provenance'>{escape(title)}6. Provenance</h2>" + _provenance(m))


def _across(across: dict, sections) -> str:
    rows = [[f"model {k + 1}: {m['headline']['model']}"] + [_num(m["headline"][key])
            for key in across] for k, (m, _) in enumerate(sections)]
    rows.append(["mean"] + [_num(v["mean"]) for v in across.values()])
    rows.append(["std"] + [_num(v["std"]) for v in across.values()])
    return ("<h2 id='across-models'>Across models</h2>"
            + _table(["model"] + [LABELS[k] for k in across], rows))


def render(sections: list[tuple[dict, dict]], across: dict | None = None) -> str:
    """The whole page: sections are (metrics, {figure name: png path}) per model."""
    first = sections[0][0]
    body = [f"<h1>pneumoscan evaluation report</h1><p class='note'>split "
            f"<b>{escape(first['headline']['split'])}</b>, {first['provenance']['date']}, "
            f"pneumoscan {escape(first['provenance']['package_version'])}</p>",
            "<p class='warn'><b>Not for clinical use.</b> pneumoscan is a research tool; its "
            "output is not a diagnosis.</p>"]
    if across:
        body.append(_across(across, sections))
    for k, (m, figs) in enumerate(sections):
        body.append(_model_section(m, figs, f"Model {k + 1} - " if len(sections) > 1 else ""))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>pneumoscan evaluation report</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def robustness_section(r: dict) -> str:
    """'Acquisition robustness': the shift validation, originals vs copies, and the cue views
    (the dict of shift.shift_validation)."""
    c, w = r["clean"], r["worst"]
    rows = [["clean", "-", _num(c["auroc"]), _num(c["sensitivity"]), _num(c["specificity"]),
             "-", "-", "-"]]
    rows += [[x["change"], x["family"], _num(x["auroc"]), _num(x["sensitivity"]),
              _num(x["specificity"]), _num(x["mean_abs_dp"]), _num(x["max_abs_dp"]),
              x["label_flips"]] for x in r["changes"]]
    html = [f"<h2 id='acquisition-robustness'>Acquisition robustness</h2><p>Split "
            f"<b>{escape(r['split'])}</b> ({c['n']} images) re-rendered through each change and "
            f"scored through the user's path (decode, resize, model) at the stored threshold "
            f"{r['threshold']:.4f}. Worst change: <b>{escape(w['change'])}</b>, AUROC "
            f"{_num(w['auroc'])} (drop {_num(w['auroc_drop'])} from clean).</p>",
            _table(["change", "family", "AUROC", "sensitivity", "specificity", "mean |dp|",
                    "max |dp|", "label flips"], rows)]
    for split, o in r.get("originals", {}).items():
        html.append(f"<p>Originals ({escape(split)} folder, {o['n']} full-size files scored "
                    f"against their 224 px copies): AUROC {_num(o['auroc'])} (copies "
                    f"{_num(o['auroc_copies'])}), mean |dp| {_num(o['mean_abs_dp'])}, max "
                    f"|dp| {_num(o['max_abs_dp'])}, {o['label_flips']} label flips.</p>")
    q = r.get("cues")
    if q:
        cc, ca = q["cue_conflicting"], q["cue_agreeing"]
        html.append(
            f"<h3>Cues and shortcuts</h3><p>A statistics model ({', '.join(q['statistics'])}; "
            f"fitted on the {escape(q['fitted_on'])}) separates this split with AUROC "
            f"{_num(q['statistics_model_auroc'])}. On the {cc['n']} cue-conflicting images "
            f"({cc['n_normal']} normals that look most like pneumonia by those cues, "
            f"{cc['n_pneumonia']} pneumonias that look most normal) the model scores AUROC "
            f"{_num(cc['auroc'])}, specificity {_num(cc['specificity'])}, sensitivity "
            f"{_num(cc['sensitivity'])} (the other {ca['n']}: AUROC {_num(ca['auroc'])}, "
            f"specificity {_num(ca['specificity'])}). With the lungs masked out (central "
            f"box set to the image mean) its AUROC is {_num(q['lungs_masked_auroc'])}.</p>")
        rows = [[g["statistic"], g["bin"], f"{g['range'][0]:.3g} - {g['range'][1]:.3g}",
                 g["n"], _num(g["auroc"]), _num(g["sensitivity"]), _num(g["specificity"])]
                for g in q["subgroups"]]
        html.append(_table(["statistic", "tertile", "range", "n", "AUROC", "sensitivity",
                            "specificity"], rows))
    return "".join(html)


def write_robustness(r: dict, out_dir: str | Path) -> Path:
    """OUT_DIR/shift.json and OUT_DIR/robustness.html (the section as its own page)."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shift.json").write_text(json.dumps(r, indent=2) + "\n")
    page = out / "robustness.html"
    page.write_text("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>"
                    f"pneumoscan acquisition robustness</title><style>{CSS}</style></head>"
                    "<body><h1>pneumoscan evaluation report</h1><p class='warn'><b>Not for "
                    "clinical use.</b> pneumoscan is a research tool; its output is not a "
                    "diagnosis.</p>" + robustness_section(r) + "</body></html>\n")
    return page
