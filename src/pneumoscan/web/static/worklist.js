// The worklist page: drop files or folders, score them one by one on this computer, keep a
// table in triage order, show a row's X-ray with its heatmap, download the table as CSV.
import { createApi, decode, heatmapImageData, scoreInput, ScoreError } from "./pneumoscan.js";

const $ = (id) => document.getElementById(id);
const api = createApi();
window.pneumoscan = api;

const rows = []; // {name, file, result | null, error | null}
const queue = [];
let running = false, done = 0, total = 0, failed = 0, shown = null;

api.ready.then((model) => {
  $("status").textContent = `Model ${model.contract.model.name} ready in ${Math.round(model.loadMs)} ms. ` +
    "Images are read and scored in this browser; nothing leaves this computer.";
  $("status").dataset.state = "ready";
  $("status").dataset.loadMs = String(model.loadMs);
  $("status").dataset.timings = JSON.stringify(model.timings);
  document.body.dataset.ready = "true";
  if (model.contract.server) $("mode-switch").hidden = false;
}, (e) => {
  $("status").textContent = `The model could not be loaded: ${e}`;
  $("status").dataset.state = "error";
});

const isImageName = (name) => /\.(jpe?g|png)$/i.test(name);

function add(files) {
  for (const { file, name } of files) queue.push({ file, name });
  total += files.length;
  if (!running) run();
}

async function run() {
  running = true;
  $("progress-line").hidden = false;
  const model = await api.ready;
  // Decoding (off the main thread in the browser) of the next file overlaps the model run.
  const start = (job) => decode(job.file, job.name, model.contract.preprocessing).then(
    (d) => ({ job, d }), (e) => ({ job, e }));
  let next = queue.length ? start(queue.shift()) : null;
  while (next) {
    const t0 = performance.now();
    const { job, d, e } = await next;
    next = queue.length ? start(queue.shift()) : null;
    const row = { name: job.name, file: job.file, result: null, error: null };
    try {
      if (e) throw e;
      row.result = await scoreInput(model, d, t0, job.name);
    } catch (err) {
      row.error = err instanceof ScoreError ? err.message : `${job.name}: ${err}`;
      failed += 1;
    }
    rows.push(row);
    done += 1;
    render();
    await new Promise((r) => setTimeout(r, 0)); // let the page paint between images
  }
  running = false;
  $("progress-line").dataset.state = "done";
}

function order() {
  return [...rows].sort((a, b) => {
    if (!a.result || !b.result) return (a.result ? 0 : 1) - (b.result ? 0 : 1);
    return b.result.probability - a.result.probability;
  });
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function render() {
  $("progress").max = Math.max(total, 1);
  $("progress").value = done;
  $("progress-text").textContent = `${done} / ${total} scored` + (failed ? `, ${failed} could not be read` : "");
  $("progress-line").dataset.state = done === total ? "done" : "running";
  $("csv").disabled = $("clear").disabled = rows.length === 0;
  const body = document.createDocumentFragment();
  order().forEach((row, i) => {
    const tr = document.createElement("tr");
    tr.dataset.name = row.name;
    const r = row.result;
    tr.append(cell(String(i + 1)), cell(row.name, "name"));
    if (r) {
      const p = cell(r.probability.toFixed(4), "num");
      p.dataset.value = String(r.probability);
      const label = r.label ?? "no label"; // an image the OOD gate flags gets no label
      tr.append(p, cell(label, "label " + (r.label ?? "none")),
        cell(r.ood.flagged === null ? "–" : r.ood.flagged ? "OOD" : "no", r.ood.flagged ? "ood" : ""),
        cell(r.warnings.join("; ")));
      tr.className = "scored";
      tr.addEventListener("click", () => show(row));
    } else {
      tr.append(cell("–"), cell("error", "label error"), cell("–"), cell(row.error, "error"));
      tr.className = "failed";
    }
    if (row === shown) tr.classList.add("selected");
    body.append(tr);
  });
  $("worklist").tBodies[0].replaceChildren(body);
}

async function show(row) {
  shown = row;
  render();
  const model = await api.ready;
  const t0 = performance.now();
  const bitmap = await createImageBitmap(row.file);
  const canvas = $("view"), scale = Math.min(448 / bitmap.width, 448 / bitmap.height);
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  // The heatmap lies on the model's square input: stretch it over the X-ray as the model
  // squashed the X-ray.
  if ($("overlay").checked && row.result.heatmap) {
    const layer = new OffscreenCanvas(model.size, model.size);
    layer.getContext("2d").putImageData(heatmapImageData(row.result.heatmap, model.contract), 0, 0);
    ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
  }
  const r = row.result;
  $("view-facts").textContent = `${row.name}: ${r.label ?? "no label"}, P(pneumonia) ${r.probability.toFixed(4)} ` +
    `(threshold ${r.threshold.toFixed(4)})` + (r.etiology ? `, likelier etiology ${r.etiology}` : "") +
    (r.ood.flagged ? ". Out of distribution: the probability is unreliable." : ".");
  $("viewer").hidden = false;
  $("viewer").dataset.renderMs = String(performance.now() - t0);
  $("viewer").dataset.name = row.name;
}

function csvField(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

function csv() {
  // The columns of `pneumoscan predict --format csv` (Prediction.csv_columns), ranked.
  const head = ["rank", "path", "probability", "label", "etiology", "ood_flagged", "ood_score",
    "warnings", "error"];
  const lines = order().map((row, i) => {
    const r = row.result;
    return [i + 1, row.name, r ? r.probability : "", r ? r.label : "", r ? r.etiology : "",
      r ? r.ood.flagged : "", r ? r.ood.score : "", r ? r.warnings.join("; ") : "",
      row.error || ""]
      .map(csvField).join(",");
  });
  return [head.join(","), ...lines].join("\r\n") + "\r\n";
}

$("csv").addEventListener("click", () => {
  const url = URL.createObjectURL(new Blob([csv()], { type: "text/csv" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = "pneumoscan-worklist.csv";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});
$("clear").addEventListener("click", () => {
  if (running) return;
  rows.length = 0; done = total = failed = 0; shown = null;
  $("viewer").hidden = true;
  render();
});
$("overlay").addEventListener("change", () => { if (shown) show(shown); });

const named = (files) => [...files].map((file) => ({ file, name: file.webkitRelativePath || file.name }));
$("files").addEventListener("change", (e) => { add(named(e.target.files)); e.target.value = ""; });
$("folder").addEventListener("change", (e) => {
  add(named(e.target.files).filter((f) => isImageName(f.name)).sort((a, b) => a.name < b.name ? -1 : 1));
  e.target.value = "";
});

// Dropped folders are walked recursively (their image files, by name); dropped files are
// taken as they are, so a bad one gets its own error.
async function walk(entry, path, out) {
  if (entry.isFile) {
    if (!path || isImageName(entry.name)) {
      out.push({ file: await new Promise((ok, no) => entry.file(ok, no)), name: path + entry.name });
    }
    return;
  }
  const reader = entry.createReader();
  for (;;) {
    const batch = await new Promise((ok, no) => reader.readEntries(ok, no));
    if (!batch.length) break;
    for (const child of batch) await walk(child, `${path}${entry.name}/`, out);
  }
}

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const entries = [...e.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry());
  if (entries.every((x) => x)) {
    const out = [];
    for (const entry of entries) await walk(entry, "", out);
    add(out.sort((a, b) => a.name < b.name ? -1 : 1));
  } else {
    add(named(e.dataTransfer.files));
  }
});
