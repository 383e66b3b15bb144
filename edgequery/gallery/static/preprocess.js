// The model card's pre-processing, exactly: decoded RGBA pixels -> the encoder's float32 input.
//
// No DOM here, so the same code runs in a page, a worker or Node.  The steps are the server's
// (edgequery.gallery.images.decode_upload), so a photo embedded here and on the server gets
// the same model input:
//   1. colour: grey galleries take Pillow's luma, L = (19595 R + 38470 G + 7471 B + 2^15) >> 16;
//      RGB galleries take R, G, B (alpha is dropped, not composited);
//   2. size: the shorter side is resized to R and the centre R x R kept, in one resample of the
//      centre square's source box (edgequery.gallery.images.crop_resize);
//   3. resample: Pillow's BILINEAR - a triangle filter over half-pixel centres whose support
//      widens with the shrink factor (antialiased), 8-bit fixed point with 22 fraction bits,
//      the horizontal pass first, each pass rounded and clamped to 0..255;
//   4. values: x = (pixel / 255 - mean[c]) / std[c] in float32, grey replicated to 3 channels
//      (a file that normalises itself, ``pixel_input`` in its card entry, takes the 0-255 pixels);
//   5. layout: NCHW (1x3xRxR) or NHWC (1xRxRx3), as the file's card entry says.
// A lossless image (PNG) therefore gives the server's pixels bit for bit; JPEG decoders differ
// between platforms by a level or so.

const PRECISION_BITS = 22;

/** The server's ``resized_size``: the shorter side to ``r``, the other rounded (as Python rounds). */
export function resizedSize(w, h, r) {
  const s = r / Math.min(w, h);
  return [Math.max(r, pyRound(w * s)), Math.max(r, pyRound(h * s))];
}

/** The source box (x0, y0, x1, y1) whose resample to r x r is the centre crop of the shorter-side resize. */
export function cropBox(w, h, r) {
  const [rw, rh] = resizedSize(w, h, r);
  const left = Math.floor((rw - r) / 2), top = Math.floor((rh - r) / 2);
  const sx = w / rw, sy = h / rh;
  return [left * sx, top * sy, (left + r) * sx, (top + r) * sy];
}

// Python's round() is half-to-even; Math.round is half-up.  resizedSize needs Python's.
function pyRound(x) {
  const f = Math.floor(x), d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis (box edges are C floats). */
function coefficients(inSize, in0, in1, outSize) {
  in0 = Math.fround(in0);
  in1 = Math.fround(in1);
  const scale = Math.fround(in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += w[x];
    }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS))
                                 : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's ``Image.resize((r, r), BILINEAR, box)`` of one 8-bit plane (``w x h``, row-major). */
export function resamplePlane(plane, w, h, box, r) {
  const needH = r !== w || box[0] !== 0 || box[2] !== r;
  const needV = r !== h || box[1] !== 0 || box[3] !== r;
  if (!needH && !needV) return Uint8Array.from(plane);
  const horiz = coefficients(w, box[0], box[2], r);
  const vert = coefficients(h, box[1], box[3], r);
  let src = plane, sw = w;
  const bv = Int32Array.from(vert.bounds);
  if (needH) {
    const first = bv[0], last = bv[r * 2 - 2] + bv[r * 2 - 1];
    for (let i = 0; i < r; i++) bv[i * 2] -= first;
    const rows = last - first, tmp = new Uint8Array(r * rows);
    for (let yy = 0; yy < rows; yy++) {
      const row = (yy + first) * w;
      for (let xx = 0; xx < r; xx++) {
        const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1], k = xx * horiz.ksize;
        let ss = 1 << (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x++) ss += plane[row + x + xmin] * horiz.kk[k + x];
        tmp[yy * r + xx] = clip8(ss);
      }
    }
    src = tmp;
    sw = r;
  }
  if (!needV) return src;
  const out = new Uint8Array(r * r);
  for (let yy = 0; yy < r; yy++) {
    const ymin = bv[yy * 2], ymax = bv[yy * 2 + 1], k = yy * vert.ksize;
    for (let xx = 0; xx < sw; xx++) {
      let ss = 1 << (PRECISION_BITS - 1);
      for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * sw + xx] * vert.kk[k + y];
      out[yy * r + xx] = clip8(ss);
    }
  }
  return out;
}

/** The colour planes of RGBA pixels: one (Pillow's luma) for a grey gallery, else R, G, B. */
export function planes(rgba, w, h, colour) {
  const n = w * h;
  if (colour === "grey") {
    const g = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      g[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >>> 16;
    }
    return [g];
  }
  const out = [new Uint8Array(n), new Uint8Array(n), new Uint8Array(n)];
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) out[c][i] = rgba[4 * i + c];
  return out;
}

/** RGBA pixels (``w x h``) -> the R x R uint8 planes the model sees (steps 1-3). */
export function modelPixels(rgba, w, h, input) {
  const r = input.resolution;
  const box = cropBox(w, h, r);
  return planes(rgba, w, h, input.colour).map((p) => resamplePlane(p, w, h, box, r));
}

/** uint8 planes -> the float32 model input in ``layout`` (steps 4-5).  A file that takes pixels
 *  (its card entry's ``pixel_input``, e.g. the NHWC .tflite) gets 0-255 values: it normalises itself. */
export function modelInput(pixels, input, layout, pixelInput = null) {
  const r = input.resolution, n = r * r, x = new Float32Array(3 * n);
  for (let c = 0; c < 3; c++) {
    const p = pixels[pixels.length === 1 ? 0 : c];
    const mean = Math.fround(input.mean[c]), std = Math.fround(input.std[c]);
    for (let i = 0; i < n; i++) {
      const v = pixelInput ? p[i] : Math.fround(Math.fround(Math.fround(p[i] / 255) - mean) / std);
      if (layout === "NHWC") x[i * 3 + c] = v;
      else x[c * n + i] = v;
    }
  }
  return x;
}
