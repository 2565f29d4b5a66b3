// What transforms.load_gray does in Python, in plain JS, so the browser gives the model the
// same uint8 pixels: gray (Pillow's L conversion), JPEG draft scaling, then Pillow's
// antialiased bilinear resize, integer for integer. Pure functions: no DOM.

const PRECISION_BITS = 22; // Pillow Resample.c: 32 - 8 - 2

// RGBA bytes (canvas getImageData) -> gray bytes as Pillow's convert("L") gives them;
// transparent pixels are laid over black first, as _to_gray8 does.
export function grayFromRGBA(rgba, width, height) {
  const n = width * height;
  const gray = new Uint8Array(n);
  // Fast path: an opaque gray image (R = G = B, the X-rays) is its own L channel.
  const words = new Uint32Array(rgba.buffer, rgba.byteOffset, n);
  let i = 0;
  for (; i < n; i++) {
    const v = words[i], r = v & 0xff;
    if (v >>> 24 !== 0xff || ((v >>> 8) & 0xff) !== r || ((v >>> 16) & 0xff) !== r) break;
    gray[i] = r;
  }
  for (let j = 4 * i; i < n; i++, j += 4) {
    let r = rgba[j], g = rgba[j + 1], b = rgba[j + 2];
    const a = rgba[j + 3];
    if (a !== 255) {
      r = Math.round((r * a) / 255); g = Math.round((g * a) / 255); b = Math.round((b * a) / 255);
    }
    gray[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >>> 16;
  }
  return gray;
}

// Pillow's JpegImageFile.draft: the largest DCT scale 1/s (s in 8, 4, 2, 1) that keeps both
// sides at least `request` pixels.
export function draftScale(width, height, request) {
  const scale = Math.min(Math.floor(width / request), Math.floor(height / request));
  for (const s of [8, 4, 2, 1]) if (scale >= s) return s;
  return 1;
}

// libjpeg's scaled IDCT (1/2, 1/4, 1/8) outputs the average of each s x s cell of the full
// IDCT (jidctred.c); from the decoded pixels this is a box average, up to rounding (measured:
// ~14% of reduced pixels off by one, unbiased, far fewer after the resize averages them).
export function reduceBox(src, width, height, s) {
  const w = Math.ceil(width / s), h = Math.ceil(height / s);
  const out = new Uint8Array(w * h);
  for (let oy = 0; oy < h; oy++) {
    const y0 = oy * s, y1 = Math.min(y0 + s, height);
    for (let ox = 0; ox < w; ox++) {
      const x0 = ox * s, x1 = Math.min(x0 + s, width);
      let sum = 0;
      for (let y = y0; y < y1; y++) {
        const row = y * width;
        for (let x = x0; x < x1; x++) sum += src[row + x];
      }
      // Round half to even: libjpeg rounds the average of the unrounded IDCT, which is
      // almost never a tie; rounding the ties of rounded pixels up would add +1/8 level.
      const n = (y1 - y0) * (x1 - x0), q = Math.floor(sum / n), r2 = 2 * (sum - q * n);
      out[oy * w + ox] = r2 > n || (r2 === n && q % 2 === 1) ? q + 1 : q;
    }
  }
  return { data: out, width: w, height: h };
}

// Pillow Resample.c precompute_coeffs with the bilinear (triangle) filter, support 1.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      kk[xx * ksize + x] = w;
      ww += w;
    }
    if (ww !== 0.0) for (let x = 0; x < xmax; x++) kk[xx * ksize + x] /= ww;
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function fixedPoint(kk) {
  const out = new Float64Array(kk.length); // integers, exact in doubles
  for (let i = 0; i < kk.length; i++) {
    const v = kk[i] * (1 << PRECISION_BITS);
    out[i] = kk[i] < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
  }
  return out;
}

function clip8(ss) {
  if (ss >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (ss <= 0) return 0;
  return Math.floor(ss / 2 ** PRECISION_BITS);
}

// Pillow's Image.resize(size, BILINEAR) of an 8-bit gray image: horizontal pass then
// vertical, each rounded to 8 bits, over the rows the vertical pass needs.
export function resizeBilinear(src, width, height, outW, outH) {
  if (outW === width && outH === height) return Uint8Array.from(src);
  const h = coefficients(width, outW), v = coefficients(height, outH);
  const needH = outW !== width, needV = outH !== height;
  let data = src, rows = height, first = 0;
  if (needH) {
    first = v.bounds[0];
    const last = v.bounds[outH * 2 - 2] + v.bounds[outH * 2 - 1];
    if (!needV) { first = 0; }
    rows = needV ? last - first : height;
    const k = fixedPoint(h.kk), tmp = new Uint8Array(outW * rows), half = 2 ** (PRECISION_BITS - 1);
    for (let y = 0; y < rows; y++) {
      const row = (y + first) * width;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = h.bounds[xx * 2], xmax = h.bounds[xx * 2 + 1], base = xx * h.ksize;
        let ss = half;
        for (let x = 0; x < xmax; x++) ss += src[row + x + xmin] * k[base + x];
        tmp[y * outW + xx] = clip8(ss);
      }
    }
    data = tmp;
  }
  if (!needV) return data;
  const w = needH ? outW : width, k = fixedPoint(v.kk), out = new Uint8Array(w * outH);
  const half = 2 ** (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = v.bounds[yy * 2] - (needH ? first : 0), ymax = v.bounds[yy * 2 + 1];
    const base = yy * v.ksize;
    for (let xx = 0; xx < w; xx++) {
      let ss = half;
      for (let y = 0; y < ymax; y++) ss += data[(y + ymin) * w + xx] * k[base + y];
      out[yy * w + xx] = clip8(ss);
    }
  }
  return out;
}

// Float bilinear resize as Pillow's mode "F" (explain.resize_map): for the heatmap.
export function resizeFloat(src, width, height, outW, outH) {
  const h = coefficients(width, outW), v = coefficients(height, outH);
  const tmp = new Float32Array(outW * height);
  for (let y = 0; y < height; y++) {
    for (let xx = 0; xx < outW; xx++) {
      const xmin = h.bounds[xx * 2], xmax = h.bounds[xx * 2 + 1], base = xx * h.ksize;
      let ss = 0;
      for (let x = 0; x < xmax; x++) ss += src[y * width + x + xmin] * h.kk[base + x];
      tmp[y * outW + xx] = ss;
    }
  }
  const out = new Float32Array(outW * outH);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = v.bounds[yy * 2], ymax = v.bounds[yy * 2 + 1], base = yy * v.ksize;
    for (let xx = 0; xx < outW; xx++) {
      let ss = 0;
      for (let y = 0; y < ymax; y++) ss += tmp[(y + ymin) * outW + xx] * v.kk[base + y];
      out[yy * outW + xx] = Math.min(1, Math.max(0, ss));
    }
  }
  return out;
}

// Decoded gray pixels at the file's own size -> the (size x size) model input, as
// transforms.load_gray: JPEGs are first reduced as Pillow's draft((2 size, 2 size)) would.
export function toModelInput(gray, width, height, size, isJpeg) {
  let img = { data: gray, width, height };
  const s = isJpeg ? draftScale(width, height, 2 * size) : 1;
  if (s > 1) img = reduceBox(gray, width, height, s);
  return resizeBilinear(img.data, img.width, img.height, size, size);
}
