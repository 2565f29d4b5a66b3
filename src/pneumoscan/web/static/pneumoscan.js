// The public API, on the page's main thread: window.pneumoscan.score(fileOrBlob, {explain})
// resolves to the REST API's prediction fields (+ `heatmap`, the CAM at feature resolution);
// {explain: true} also fills `heatmap_png` (base64 RGBA PNG, as POST
// /v1/predict?explain=true). The model runs in a Web Worker (worker.js) started at once, so
// it loads while the page renders; the files go to it as Blobs (nothing is copied or sent
// anywhere else).

// A file that cannot be read: the message names it and the problem (as the server's 422).
export class ScoreError extends Error {}

export function createApi() {
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  const pending = new Map();
  let next = 0, loaded, failed;
  const ready = new Promise((ok, no) => { loaded = ok; failed = no; });
  worker.onmessage = ({ data }) => {
    if (data.op === "ready") {
      loaded({ contract: data.contract, loadMs: data.loadMs, timings: data.timings,
               size: data.contract.preprocessing.input_size });
      return;
    }
    if (data.op === "failed") { failed(new Error(data.error)); return; }
    const { ok, no } = pending.get(data.id);
    pending.delete(data.id);
    if (data.error === undefined) ok(data.result);
    else no(data.kind === "score" ? new ScoreError(data.error) : new Error(data.error));
  };
  worker.onerror = (e) => failed(new Error(e.message || "the model's worker failed to start"));
  function call(op, blob, options) {
    const id = next++;
    return new Promise((ok, no) => {
      pending.set(id, { ok, no });
      worker.postMessage({ id, op, blob, options: { explain: !!options.explain,
                                                    name: options.name || blob.name || "image" } });
    });
  }
  return {
    ready,
    score: (blob, options = {}) => call("score", blob, options),
    input: (blob) => call("input", blob, {}), // the model input (uint8 gray), for tests
    ScoreError,
  };
}
