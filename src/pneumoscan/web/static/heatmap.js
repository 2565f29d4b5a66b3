// The heatmap's pixels, drawn on the page (worklist.js) and as the API's PNG (engine.js).
import { resizeFloat } from "./preprocess.js";

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

