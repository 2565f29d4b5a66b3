// The page's Web Worker: it loads the model and scores every file, so that decoding and the
// model run never block the page (scrolling, clicks, the progress bar stay live during a
// batch). Messages: {id, op: "score" | "input", blob, options} -> {id, result} | {id, error,
// kind}; once loaded it posts {op: "ready", ...} (or {op: "failed", error}).
import { decode, heatmapPng, load, scoreInput, ScoreError } from "./engine.js";

const ready = load();
ready.then((model) => postMessage({ op: "ready", contract: model.contract, loadMs: model.loadMs,
                                     timings: model.timings }),
           (e) => postMessage({ op: "failed", error: String(e) }));

// One file at a time: the model is one WebAssembly instance, and the messages queue here.
let chain = Promise.resolve();
onmessage = ({ data }) => {
  chain = chain.then(() => handle(data));
};

async function handle({ id, op, blob, options }) {
  try {
    const t0 = performance.now();
    const model = await ready;
    const decoded = await decode(blob, options.name, model.contract.preprocessing);
    if (op === "input") {
      postMessage({ id, result: decoded.input }, [decoded.input.buffer]);
      return;
    }
    const result = await scoreInput(model, decoded, t0, options.name);
    result.heatmap_png = null;
    if (options.explain && result.heatmap) {
      result.heatmap_png = await heatmapPng(result.heatmap, model.contract);
      result.elapsed_ms = Math.round((performance.now() - t0) * 10) / 10;
    }
    postMessage({ id, result });
  } catch (e) {
    postMessage({ id, error: e instanceof ScoreError ? e.message : String(e),
                  kind: e instanceof ScoreError ? "score" : "other" });
  }
}
