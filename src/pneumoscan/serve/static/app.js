// Upload an X-ray to POST /v1/predict and show the answer. No build step, no network but this server.
"use strict";
const $ = (id) => document.getElementById(id);
let shownUrl = null;

function showError(message) {
  $("result").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

// The heatmap comes in the model's square input geometry. Stretched over a box of the X-ray's
// own aspect ratio, it lands where the model saw each part of the squashed X-ray; in a square
// box with the X-ray letterboxed it would not (a 4:3 original put the map off the lungs).
const BOX_SIDE = 320;
$("xray").addEventListener("load", () => {
  const img = $("xray"), box = img.parentElement;
  const ratio = img.naturalWidth / img.naturalHeight;
  box.style.width = `${Math.round(ratio >= 1 ? BOX_SIDE : BOX_SIDE * ratio)}px`;
  box.style.height = `${Math.round(ratio >= 1 ? BOX_SIDE / ratio : BOX_SIDE)}px`;
});

function showResult(file, r) {
  $("error").hidden = true;
  if (shownUrl) URL.revokeObjectURL(shownUrl);
  shownUrl = URL.createObjectURL(file);
  $("xray").src = shownUrl;
  $("heatmap").hidden = !r.heatmap_png;
  if (r.heatmap_png) $("heatmap").src = "data:image/png;base64," + r.heatmap_png;
  $("label").textContent = r.label ?? "no label (out of distribution)";
  $("label").className = "label " + (r.label ?? "none");
  $("probability").textContent = r.probability.toFixed(4);
  $("probability").dataset.value = String(r.probability);
  // A three-class (etiology) model also says which kind of pneumonia is likelier.
  $("etiology-line").hidden = r.etiology == null;
  if (r.etiology != null) {
    $("etiology").textContent = r.etiology;
    $("class-probabilities").textContent = "(" + Object.entries(r.class_probabilities)
      .map(([name, p]) => `${name} ${p.toFixed(3)}`).join(", ") + ")";
  }
  $("fill").style.width = (100 * r.probability).toFixed(1) + "%";
  $("threshold-marker").style.left = (100 * r.threshold).toFixed(1) + "%";
  $("threshold").textContent = r.threshold.toFixed(4);
  $("model").textContent = `Model ${r.model.name} ${r.model.version}, ${r.elapsed_ms} ms.`;
  $("warnings").replaceChildren(...r.warnings.map((w) => {
    const li = document.createElement("li");
    li.textContent = w;
    return li;
  }));
  $("result").hidden = false;
}

async function upload(file) {
  const body = new FormData();
  body.append("file", file, file.name);
  const explain = $("explain").checked ? "?explain=true" : "";
  $("result").dataset.state = "pending";
  try {
    const response = await fetch("/v1/predict" + explain, { method: "POST", body });
    const r = await response.json().catch(() => ({}));
    if (!response.ok) {
      const detail = typeof r.detail === "string" ? r.detail : `error ${response.status}`;
      showError(`Could not score this file: ${detail}`);
    } else {
      showResult(file, r);
    }
  } catch (e) {
    showError(`Could not reach the server: ${e}`);
  }
  $("result").dataset.state = "done";
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) upload(e.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) upload(e.dataTransfer.files[0]);
});

// "On this computer" exists when the server could build the in-browser site (/local/).
fetch("/local/model/contract.json", { method: "HEAD" }).then((r) => {
  if (r.ok) return;
  const link = $("mode-local");
  link.removeAttribute("href");
  link.classList.add("off");
  link.title = "not available: the server has no checked ONNX export of this model";
});
