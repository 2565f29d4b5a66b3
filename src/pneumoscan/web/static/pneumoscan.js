// The model on this computer: ONNX Runtime Web (WebAssembly, one thread) runs the exported
// graph; decoding, the decision rules, the OOD gate and the CAM follow the Python contract
// (model/contract.json). No request leaves this site's folder.
import * as ort from "../ort/ort.wasm.bundle.min.mjs";
import { grayFromRGBA, jpegLumaTable, resizeFloat, toModelInput } from "./preprocess.js";

const SITE = new URL("../", import.meta.url);
const MAX_PIXELS = 100_000_000; // transforms.MAX_PIXELS

export class ScoreError extends Error {}

async function fetchOk(path) {
  const response = await fetch(new URL(path, SITE));
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response;
}

function oodStats(buffer, spec) {
  const all = new Float32Array(buffer);
  const out = {};
  let offset = 0;
  for (const name of spec.order) {
    const n = spec.shapes[name].reduce((a, b) => a * b, 1);
    out[name] = all.subarray(offset, offset + n);
    offset += n;
  }
  if (offset !== all.length) throw new Error("model/ood.bin does not match contract.json");
  out.k = spec.shapes.axes[0];
  out.d = spec.shapes.axes[1];
  return out;
}

// Load the contract, the OOD statistics and the graph; run one blank image to warm up.
export async function load() {
  const t0 = performance.now();
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = { wasm: new URL("ort/ort-wasm-simd-threaded.wasm", SITE).href };
  const [contract, graph] = await Promise.all([
    fetchOk("model/contract.json").then((r) => r.json()),
    fetchOk("model/model.onnx").then((r) => r.arrayBuffer()),
  ]);
  const ood = contract.ood
    ? oodStats(await (await fetchOk("model/" + contract.ood.file)).arrayBuffer(), contract.ood)
    : null;
  const t1 = performance.now();
  const session = await ort.InferenceSession.create(new Uint8Array(graph), {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
    // One image per run: a fixed batch lets the padding arithmetic (Shape -> ... -> Pad,
    // timm's TF-"same" convolutions) fold into constants at load.
    freeDimensionOverrides: { batch: 1 },
  });
  const model = { contract, session, ood, size: contract.preprocessing.input_size };
  const t2 = performance.now();
  await forward(model, new Uint8Array(model.size * model.size));
  model.loadMs = performance.now() - t0;
  // fetch: contract, graph, OOD statistics; session: WebAssembly start-up + graph set-up.
  model.timings = { fetch: t1 - t0, session: t2 - t1, warmup: performance.now() - t2 };
  return model;
}

let canvas = null;
function context(width, height) {
  if (!canvas) canvas = new OffscreenCanvas(width, height);
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  return canvas.getContext("2d", { willReadFrequently: true });
}

// transforms.store_as_jpeg (Preprocessing.storage_quality): one JPEG encode-decode round trip
// of the resized gray image, with the browser's libjpeg at the same quality.
async function storeAsJpeg(gray, size, quality) {
  const c = new OffscreenCanvas(size, size);
  const ctx = c.getContext("2d", { willReadFrequently: true });
  const img = new ImageData(size, size);
  for (let i = 0; i < gray.length; i++) img.data.set([gray[i], gray[i], gray[i], 255], 4 * i);
  ctx.putImageData(img, 0, 0);
  const jpeg = await c.convertToBlob({ type: "image/jpeg", quality: quality / 100 });
  const bitmap = await createImageBitmap(jpeg, { colorSpaceConversion: "none" });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return grayFromRGBA(ctx.getImageData(0, 0, size, size).data, size, size);
}

// A file's bytes -> {input: (size*size) uint8 gray, width, height, warnings}, or ScoreError;
// `prep` is the contract's preprocessing.
export async function decode(blob, name, prep) {
  const size = prep.input_size;
  if (blob.size === 0) throw new ScoreError(`${name}: empty file (0 bytes)`);
  const head = new Uint8Array(await blob.slice(0, 132).arrayBuffer());
  if (String.fromCharCode(...head.subarray(128, 132)) === "DICM") {
    throw new ScoreError(`${name}: DICOM is read on the server only ("on the server")`);
  }
  const isJpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
  const isPng = head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47;
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, {
      colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image",
    });
  } catch {
    throw new ScoreError(`${name}: not a readable image (unknown or corrupt format)`);
  }
  try {
    const { width, height } = bitmap;
    if (width * height > MAX_PIXELS) {
      throw new ScoreError(`${name}: image too large (${width}x${height} pixels, limit ${MAX_PIXELS})`);
    }
    if (width < 2 || height < 2) {
      throw new ScoreError(`${name}: image is ${width}x${height} pixels, too small`);
    }
    const ctx = context(width, height);
    ctx.clearRect(0, 0, width, height);
    ctx.drawImage(bitmap, 0, 0);
    const gray = grayFromRGBA(ctx.getImageData(0, 0, width, height).data, width, height);
    const warnings = [];
    // The browser reads a 16-bit PNG as 8 bits; Python stretches its own range instead.
    if (isPng && head[24] === 16) warnings.push("16-bit PNG: read as 8 bits in the browser; the server may score it differently");
    const quant = isJpeg && prep.storage_quality > 0
      ? jpegLumaTable(new Uint8Array(await blob.slice(0, 1 << 18).arrayBuffer())) : null;
    let input = toModelInput(gray, width, height, size, isJpeg, quant);
    if (prep.storage_quality > 0) input = await storeAsJpeg(input, size, prep.storage_quality);
    return { input, width, height, warnings };
  } finally {
    bitmap.close();
  }
}

async function forward(model, input) {
  const s = model.size;
  const feeds = { image: new ort.Tensor("uint8", input, [1, 1, s, s]) };
  const out = await model.session.run(feeds);
  const result = { logits: Float32Array.from(out.logit.data), features: out.features.data,
                   dims: out.features.dims };
  return result;
}

const f32 = Math.fround;

// predict.class_probabilities: [1 - p, p] with p = sigmoid(z / T) for a binary model,
// softmax(z / T) for a K-class one; float32 as torch computes them.
function classProbabilities(logits, contract) {
  const t = contract.temperature;
  if (contract.labels.length === 2 && logits.length === 1) {
    const p = f32(1 / (1 + Math.exp(-f32(logits[0] / t))));
    return [1 - p, p];
  }
  const z = Array.from(logits, (v) => f32(v / t));
  const top = Math.max(...z);
  const e = z.map((v) => Math.exp(v - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => f32(v / sum));
}

// ood.scores: Mahalanobis distance of the pooled features under the stored PPCA statistics.
function oodScore(pooled, st) {
  const { k, d } = st;
  const centred = new Float64Array(d);
  let total = 0;
  for (let j = 0; j < d; j++) {
    centred[j] = pooled[j] - st.mean[j];
    total += centred[j] * centred[j];
  }
  const z = new Float64Array(k);
  let inPlane = 0;
  for (let i = 0; i < k; i++) {
    let s = 0;
    const row = i * d;
    for (let j = 0; j < d; j++) s += centred[j] * st.axes[row + j];
    z[i] = s;
    inPlane += s * s;
  }
  let inside = 0;
  for (let i = 0; i < k; i++) {
    let s = 0;
    for (let j = 0; j < k; j++) s += st.precision[i * k + j] * z[j];
    inside += z[i] * s;
  }
  const residual = Math.max(total - inPlane, 0);
  return Math.sqrt(inside + residual / st.residual_var[0]);
}

// explain.cam_from_features: relu(sum_c w_c A_c), scaled to [0, 1] by its maximum, with w the
// classifier row of the pneumonia logit (a K-class model: the gradient of the pneumonia
// log-odds log sum_{j != NORMAL} e^{z_j / T} - z_NORMAL / T through the classifier).
function cam(features, dims, logits, contract) {
  const [, c, h, w] = dims;
  const { weight } = contract.cam;
  let row;
  if (weight.length === 1) {
    row = weight[0];
  } else {
    const normal = contract.labels.indexOf("NORMAL");
    const sick = contract.labels.map((_, i) => i).filter((i) => i !== normal);
    const ez = sick.map((i) => Math.exp(logits[i] / contract.temperature));
    const total = ez.reduce((a, b) => a + b, 0);
    row = weight[normal].map((v, ch) =>
      sick.reduce((s, i, n) => s + (ez[n] / total) * weight[i][ch], 0) - v);
  }
  const map = new Float32Array(h * w);
  for (let ch = 0; ch < c; ch++) {
    const wc = row[ch], base = ch * h * w;
    for (let p = 0; p < h * w; p++) map[p] += wc * features[base + p];
  }
  let peak = 0;
  for (let p = 0; p < map.length; p++) peak = Math.max(peak, map[p]);
  for (let p = 0; p < map.length; p++) map[p] = peak > 0 ? Math.max(map[p], 0) / peak : 0;
  return { width: w, height: h, data: Array.from(map) };
}

function pooledFeatures(features, dims) {
  const [, c, h, w] = dims;
  const out = new Float64Array(c);
  for (let ch = 0; ch < c; ch++) {
    let s = 0;
    for (let p = 0; p < h * w; p++) s += features[ch * h * w + p];
    out[ch] = s / (h * w);
  }
  return out;
}

// One decoded input -> the REST API's prediction fields (serve/app.py Service.result), by
// the rules of core/decisions.py decide(): no label for an image the OOD gate flags, an
// etiology only with a PNEUMONIA label.
export async function scoreInput(model, decoded, t0, path = null) {
  const { contract } = model;
  const out = await forward(model, decoded.input);
  const classes = classProbabilities(out.logits, contract);
  const normal = contract.labels.indexOf("NORMAL");
  const probability = contract.labels.length === 2 ? classes[1] : 1 - classes[normal];
  const names = contract.labels.length === 2 ? contract.labels : ["NORMAL", "PNEUMONIA"];
  const score = model.ood ? oodScore(pooledFeatures(out.features, out.dims), model.ood) : null;
  const flagged = score === null ? null : score > contract.ood.threshold;
  const label = flagged ? null : names[probability >= contract.threshold ? 1 : 0];
  let etiology = null;
  if (contract.labels.length > 2 && label === "PNEUMONIA") {
    let best = -1;
    contract.labels.forEach((name, i) => {
      if (i !== normal && (best < 0 || classes[i] > classes[best])) best = i;
    });
    etiology = contract.labels[best];
  }
  return {
    path, probability, label,
    class_probabilities: Object.fromEntries(contract.labels.map((n, i) => [n, classes[i]])),
    etiology, threshold: contract.threshold, model: contract.model,
    ood: { flagged, score, threshold: contract.ood ? contract.ood.threshold : null },
    warnings: [...(flagged ? [contract.ood_warning] : []), ...decoded.warnings],
    error: null,
    heatmap: contract.cam ? cam(out.features, out.dims, out.logits, contract) : null,
    elapsed_ms: Math.round((performance.now() - t0) * 10) / 10,
  };
}

// The heatmap as the server draws it (explain.heatmap_rgba): turbo colours, opacity
// 0.55 * value, at the model's square input geometry.
export function heatmapImageData(heatmap, contract) {
  const s = contract.preprocessing.input_size;
  const up = resizeFloat(heatmap.data, heatmap.width, heatmap.height, s, s);
  const rgba = new ImageData(s, s);
  for (let i = 0; i < up.length; i++) {
    const [r, g, b] = contract.colormap[Math.min(255, Math.floor(up[i] * 256))];
    rgba.data.set([r, g, b, Math.round(contract.heatmap_alpha * up[i] * 255)], 4 * i);
  }
  return rgba;
}

async function pngBase64(imageData) {
  const c = new OffscreenCanvas(imageData.width, imageData.height);
  c.getContext("2d").putImageData(imageData, 0, 0);
  const bytes = new Uint8Array(await (await c.convertToBlob({ type: "image/png" })).arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

// The public API: window.pneumoscan.score(fileOrBlob, {explain}) resolves to the REST API's
// prediction fields (+ `heatmap`, the CAM at feature resolution); {explain: true} also
// fills `heatmap_png` (base64 RGBA PNG, as POST /v1/predict?explain=true).
export function createApi() {
  const ready = load();
  async function score(blob, options = {}) {
    const t0 = performance.now();
    const model = await ready;
    const name = options.name || blob.name || "image";
    const decoded = await decode(blob, name, model.contract.preprocessing);
    const result = await scoreInput(model, decoded, t0, name);
    result.heatmap_png = null;
    if (options.explain && result.heatmap) {
      result.heatmap_png = await pngBase64(heatmapImageData(result.heatmap, model.contract));
      result.elapsed_ms = Math.round((performance.now() - t0) * 10) / 10;
    }
    return result;
  }
  async function input(blob) { // the model input (uint8 gray, size x size), for tests
    const model = await ready;
    return (await decode(blob, blob.name || "image", model.contract.preprocessing)).input;
  }
  return { ready, score, input, ScoreError };
}
