// A baseline gray JPEG decoded as Pillow's draft("L", ...) decodes it: the Huffman-coded DCT
// coefficients read from the file, then libjpeg's reduced-size inverse DCT (jidctred.c:
// jpeg_idct_4x4 / 2x2 / 1x1, the IJG's integer arithmetic, re-implemented here for its exact
// rounding) gives the 1/2, 1/4 or 1/8 scale image pixel for pixel. The browser's own decoder
// only gives the full-size image, whose box average differs from libjpeg's scaled IDCT by one
// grey level on ~14% of pixels; a JPEG round trip after the resize (a contract's
// storage_quality) amplifies that into probability differences above 0.01.
//
// Only what pneumoscan can reproduce exactly is handled: one component, 8-bit, baseline or
// extended Huffman (SOF0/SOF1), no EXIF rotation. Anything else returns null and the caller
// uses the browser's decoder. Pure functions: no DOM.
//
// The reduced IDCT is based on the work of the Independent JPEG Group (jidctred.c, Thomas G.
// Lane; libjpeg-turbo keeps it unchanged): its algorithm and constants, written anew in JS.
// No npm decoder is used: jpeg-js (pdf.js's decoder) has its own IDCT and no reduced-size
// one, so it cannot give libjpeg's draft pixels.

const ZIGZAG = [0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48,
  41, 34, 27, 20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37,
  44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
  63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63]; // run-off guard (as libjpeg)

export class Unsupported extends Error {}

// EXIF orientation (tag 0x0112 of IFD0) of an APP1 segment's payload; 1 when absent.
function exifOrientation(bytes, start, end) {
  if (end - start < 14 || String.fromCharCode(...bytes.subarray(start, start + 4)) !== "Exif") return 1;
  const t = start + 6, little = bytes[t] === 0x49;
  const u16 = (i) => little ? bytes[i] | (bytes[i + 1] << 8) : (bytes[i] << 8) | bytes[i + 1];
  const u32 = (i) => little ? (u16(i) | (u16(i + 2) << 16)) >>> 0 : ((u16(i) << 16) | u16(i + 2)) >>> 0;
  const ifd = t + u32(t + 4);
  if (ifd + 2 > end) return 1;
  for (let k = 0, n = u16(ifd); k < n; k++) {
    const e = ifd + 2 + 12 * k;
    if (e + 12 > end) return 1;
    if (u16(e) === 0x0112) return u16(e + 8);
  }
  return 1;
}

// A Huffman table as a 16-bit lookup: entry = (code length << 8) | symbol, 0 = no code.
function huffmanLookup(counts, symbols) {
  const table = new Uint16Array(1 << 16);
  let code = 0, k = 0;
  for (let len = 1; len <= 16; len++) {
    for (let i = 0; i < counts[len - 1]; i++, k++) {
      const shift = 16 - len, first = code << shift, entry = (len << 8) | symbols[k];
      if (first + (1 << shift) > table.length) throw new Unsupported("bad Huffman table");
      table.fill(entry, first, first + (1 << shift));
      code++;
    }
    code <<= 1;
  }
  return table;
}

// The file's structure: {width, height, quant (natural order), blocks: every 8x8 block's
// coefficients}; `wantScan(frame)` false: blocks null (the entropy-coded data is not read).
// Throws Unsupported for what jpeg.js does not read exactly as libjpeg.
export function readJpeg(bytes, wantScan = () => true) {
  if (bytes[0] !== 0xff || bytes[1] !== 0xd8) throw new Unsupported("not a JPEG");
  const quant = [], dc = [], ac = [];
  let frame = null, restart = 0;
  for (let i = 2; i + 4 <= bytes.length;) {
    if (bytes[i] !== 0xff) throw new Unsupported("bad marker");
    const marker = bytes[i + 1];
    if (marker === 0xff) { i += 1; continue; }
    if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7)) { i += 2; continue; }
    if (marker === 0xd9) break;
    const length = (bytes[i + 2] << 8) | bytes[i + 3], start = i + 4, end = i + 2 + length;
    if (end > bytes.length) throw new Unsupported("truncated header");
    if (marker === 0xdb) {
      for (let j = start; j < end;) {
        const wide = bytes[j] >> 4, id = bytes[j] & 15, table = new Int32Array(64);
        j += 1;
        for (let k = 0; k < 64; k++, j += wide ? 2 : 1) {
          table[ZIGZAG[k]] = wide ? (bytes[j] << 8) | bytes[j + 1] : bytes[j];
        }
        quant[id] = table;
      }
    } else if (marker === 0xc4) {
      for (let j = start; j < end;) {
        const cls = bytes[j] >> 4, id = bytes[j] & 15, counts = bytes.subarray(j + 1, j + 17);
        const n = counts.reduce((a, b) => a + b, 0);
        (cls ? ac : dc)[id] = huffmanLookup(counts, bytes.subarray(j + 17, j + 17 + n));
        j += 17 + n;
      }
    } else if (marker === 0xdd) {
      restart = (bytes[start] << 8) | bytes[start + 1];
    } else if (marker === 0xe1) {
      if (exifOrientation(bytes, start, end) !== 1) throw new Unsupported("EXIF rotation");
    } else if (marker === 0xc0 || marker === 0xc1) {
      if (bytes[start] !== 8 || bytes[start + 5] !== 1) throw new Unsupported("not 8-bit gray");
      frame = { height: (bytes[start + 1] << 8) | bytes[start + 2],
                width: (bytes[start + 3] << 8) | bytes[start + 4], q: bytes[start + 8] };
    } else if (marker >= 0xc2 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      throw new Unsupported("progressive, lossless or arithmetic-coded JPEG");
    } else if (marker === 0xda) {
      if (!frame || !quant[frame.q] || bytes[start] !== 1) throw new Unsupported("no frame");
      if (!wantScan(frame)) return { ...frame, quant: quant[frame.q], blocks: null };
      const tables = bytes[start + 2];
      const blocks = decodeScan(bytes, end, frame, dc[tables >> 4], ac[tables & 15], restart);
      return { ...frame, quant: quant[frame.q], blocks };
    }
    i = end;
  }
  throw new Unsupported("no scan");
}

// One baseline scan of one component: every 8x8 block's coefficients (natural order).
function decodeScan(bytes, pos, frame, dcTable, acTable, restart) {
  if (!dcTable || !acTable) throw new Unsupported("missing Huffman table");
  const bw = Math.ceil(frame.width / 8), bh = Math.ceil(frame.height / 8);
  if (!(bw > 0 && bh > 0)) throw new Unsupported("empty frame");
  const blocks = new Int16Array(bw * bh * 64);
  let buf = 0, bits = 0, marker = false;
  const n = bytes.length;
  function fill() { // keep >= 16 bits in buf; zeros past a marker, as libjpeg
    while (bits <= 24) {
      let b = 0;
      if (!marker) {
        if (pos >= n) throw new Unsupported("truncated scan"); // Pillow: "image file is truncated"
        b = bytes[pos];
        if (b === 0xff) {
          const next = bytes[pos + 1];
          if (next === 0x00) pos += 2;
          else { marker = true; b = 0; }
        } else {
          pos += 1;
        }
      }
      buf = ((buf << 8) | b) >>> 0;
      bits += 8;
    }
  }
  function decode(table) {
    fill();
    const entry = table[(buf >>> (bits - 16)) & 0xffff];
    if (!entry) throw new Unsupported("bad Huffman code");
    bits -= entry >> 8;
    return entry & 0xff;
  }
  function receive(s) { // s bits, sign-extended as in the spec's EXTEND
    fill();
    const v = (buf >>> (bits - s)) & ((1 << s) - 1);
    bits -= s;
    return v < (1 << (s - 1)) ? v - (1 << s) + 1 : v;
  }
  let pred = 0, todo = restart;
  for (let b = 0, total = bw * bh; b < total; b++) {
    if (restart && todo === 0) { // RSTn: byte-align, skip the marker, reset the DC predictor
      bits = 0; buf = 0; marker = false;
      while (pos + 1 < n && !(bytes[pos] === 0xff && bytes[pos + 1] >= 0xd0 && bytes[pos + 1] <= 0xd7)) pos++;
      pos += 2;
      pred = 0;
      todo = restart;
    }
    todo--;
    const base = b * 64, t = decode(dcTable);
    pred += t ? receive(t) : 0;
    blocks[base] = pred;
    for (let k = 1; k < 64;) {
      const rs = decode(acTable), r = rs >> 4, s = rs & 15;
      if (s) {
        k += r;
        blocks[base + ZIGZAG[k]] = receive(s);
        k++;
      } else if (r === 15) {
        k += 16;
      } else {
        break;
      }
    }
  }
  return blocks;
}

// jidctred.c's constants: FIX(x) = round(x * 2^13).
const CONST_BITS = 13, PASS1_BITS = 2;
const F0_211164243 = 1730, F0_509795579 = 4176, F0_601344887 = 4926, F0_720959822 = 5906,
  F0_765366865 = 6270, F0_850430095 = 6967, F0_899976223 = 7373, F1_061594337 = 8697,
  F1_272758580 = 10426, F1_451774981 = 11893, F1_847759065 = 15137, F2_172734803 = 17799,
  F2_562915447 = 20995, F3_624509785 = 29692;
// DESCALE(x, n): x / 2^n rounded, by an arithmetic shift (exact in doubles: |x| < 2^53).
const descale = (x, n) => Math.floor((x + 2 ** (n - 1)) / 2 ** n);
const clamp = (v) => (v < -128 ? 0 : v > 127 ? 255 : v + 128);

// 8x8 coefficients -> 4x4 pixels (libjpeg's jpeg_idct_4x4; column 4 / row 4 unused). `d`: the
// dequantized coefficients (coefficient x quantization step), natural order.
function idct4x4(d, ws, out, stride, o, ow, oh) {
  const sh1 = CONST_BITS - PASS1_BITS + 1, sh2 = CONST_BITS + PASS1_BITS + 3 + 1;
  for (let col = 0; col < 8; col++) {
    if (col === 4) continue;
    const t0 = d[col] * 2 ** (CONST_BITS + 1);
    const t2 = d[16 + col] * F1_847759065 - d[48 + col] * F0_765366865;
    const t10 = t0 + t2, t12 = t0 - t2;
    const z1 = d[56 + col], z2 = d[40 + col], z3 = d[24 + col], z4 = d[8 + col];
    const o0 = -z1 * F0_211164243 + z2 * F1_451774981 - z3 * F2_172734803 + z4 * F1_061594337;
    const o2 = -z1 * F0_509795579 - z2 * F0_601344887 + z3 * F0_899976223 + z4 * F2_562915447;
    ws[col] = descale(t10 + o2, sh1);
    ws[24 + col] = descale(t10 - o2, sh1);
    ws[8 + col] = descale(t12 + o0, sh1);
    ws[16 + col] = descale(t12 - o0, sh1);
  }
  for (let r = 0; r < 4 && r < oh; r++) {
    const w = r * 8, row = o + r * stride;
    const t0 = ws[w] * 2 ** (CONST_BITS + 1);
    const t2 = ws[w + 2] * F1_847759065 - ws[w + 6] * F0_765366865;
    const t10 = t0 + t2, t12 = t0 - t2;
    const z1 = ws[w + 7], z2 = ws[w + 5], z3 = ws[w + 3], z4 = ws[w + 1];
    const o0 = -z1 * F0_211164243 + z2 * F1_451774981 - z3 * F2_172734803 + z4 * F1_061594337;
    const o2 = -z1 * F0_509795579 - z2 * F0_601344887 + z3 * F0_899976223 + z4 * F2_562915447;
    out[row] = clamp(descale(t10 + o2, sh2));
    if (ow > 1) out[row + 1] = clamp(descale(t12 + o0, sh2));
    if (ow > 2) out[row + 2] = clamp(descale(t12 - o0, sh2));
    if (ow > 3) out[row + 3] = clamp(descale(t10 - o2, sh2));
  }
}

// 8x8 coefficients -> 2x2 pixels (jpeg_idct_2x2: only the DC and the odd terms).
function idct2x2(d, ws, out, stride, o, ow, oh) {
  const sh1 = CONST_BITS - PASS1_BITS + 2, sh2 = CONST_BITS + PASS1_BITS + 3 + 2;
  for (let col = 0; col < 8; col++) {
    if (col === 2 || col === 4 || col === 6) continue;
    const t10 = d[col] * 2 ** (CONST_BITS + 2);
    const t0 = -d[56 + col] * F0_720959822 + d[40 + col] * F0_850430095
      - d[24 + col] * F1_272758580 + d[8 + col] * F3_624509785;
    ws[col] = descale(t10 + t0, sh1);
    ws[8 + col] = descale(t10 - t0, sh1);
  }
  for (let r = 0; r < 2 && r < oh; r++) {
    const w = r * 8, row = o + r * stride;
    const t10 = ws[w] * 2 ** (CONST_BITS + 2);
    const t0 = -ws[w + 7] * F0_720959822 + ws[w + 5] * F0_850430095
      - ws[w + 3] * F1_272758580 + ws[w + 1] * F3_624509785;
    out[row] = clamp(descale(t10 + t0, sh2));
    if (ow > 1) out[row + 1] = clamp(descale(t10 - t0, sh2));
  }
}

// The image at 1/s scale (s in 2, 4, 8) as libjpeg's scaled decode gives it.
export function reducedIdct(jpeg, s) {
  const n = 8 / s, bw = Math.ceil(jpeg.width / 8), bh = Math.ceil(jpeg.height / 8);
  const width = Math.ceil(jpeg.width / s), height = Math.ceil(jpeg.height / s);
  const out = new Uint8Array(width * height), ws = new Float64Array(64), q = jpeg.quant;
  const d = new Float64Array(64), blocks = jpeg.blocks;
  for (let by = 0; by < bh; by++) {
    for (let bx = 0; bx < bw; bx++) {
      const base = (by * bw + bx) * 64, o = by * n * width + bx * n;
      const ow = Math.min(n, width - bx * n), oh = Math.min(n, height - by * n);
      let ac = false;
      for (let k = 1; k < 64; k++) if (blocks[base + k] !== 0) { ac = true; break; }
      if (!ac || s === 8) { // DC only: every output pixel is jpeg_idct_1x1's (exactly)
        const v = clamp(descale(blocks[base] * q[0], 3));
        for (let r = 0; r < oh; r++) out.fill(v, o + r * width, o + r * width + ow);
        continue;
      }
      for (let k = 0; k < 64; k++) d[k] = blocks[base + k] * q[k];
      if (s === 2) idct4x4(d, ws, out, width, o, ow, oh);
      else idct2x2(d, ws, out, width, o, ow, oh);
    }
  }
  return { data: out, width, height };
}
