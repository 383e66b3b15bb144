package dev.edgequery.demo

/**
 * The model card's pre-processing, exactly (export/README.md, "Pre-processing"): decoded ARGB
 * pixels -> the query encoder's float32 input.
 *
 * No Android imports: the app feeds it `Bitmap.getPixels()`, the JVM test `javax.imageio`
 * pixels.  It follows the server (edgequery.gallery.images.decode_upload) and the page
 * (edgequery/gallery/static/preprocess.js) step for step, so the same lossless photo gives the
 * same 8-bit pixels on the phone, in the browser and on the server:
 *  1. colour: grey galleries take Pillow's luma (19595 R + 38470 G + 7471 B + 2^15) >> 16;
 *  2. size: the centre square of the shorter-side resize, resampled straight to R x R;
 *  3. resample: Pillow's BILINEAR (triangle filter over half-pixel centres, support scaled by
 *     the shrink factor), 22-bit fixed point, horizontal pass first, each pass clamped to 0..255;
 *  4. values: (pixel / 255 - mean[c]) / std[c] in float32 - or, for a file that normalises
 *     itself (its card entry's `pixel_input`, the NHWC .tflite), the 0-255 pixel values;
 *  5. layout: NHWC or NCHW, as the file's card entry says.
 */
object Preprocess {
    private const val PRECISION_BITS = 22

    /** What the card's `input` (and /v1/encoders) says about the model input. */
    class Input(val resolution: Int, val grey: Boolean, val mean: FloatArray, val std: FloatArray)

    /** Python's round(): half to even (Math.rint rounds exactly so). */
    private fun pyRound(x: Double): Int = Math.rint(x).toInt()

    fun resizedSize(w: Int, h: Int, r: Int): IntArray {
        val s = r.toDouble() / minOf(w, h)
        return intArrayOf(maxOf(r, pyRound(w * s)), maxOf(r, pyRound(h * s)))
    }

    /** The source box (x0, y0, x1, y1) whose resample to r x r is the centre crop of the shorter-side resize. */
    fun cropBox(w: Int, h: Int, r: Int): DoubleArray {
        val (rw, rh) = resizedSize(w, h, r).let { it[0] to it[1] }
        val left = (rw - r) / 2
        val top = (rh - r) / 2
        val sx = w.toDouble() / rw
        val sy = h.toDouble() / rh
        return doubleArrayOf(left * sx, top * sy, (left + r) * sx, (top + r) * sy)
    }

    private class Coefficients(val ksize: Int, val bounds: IntArray, val kk: IntArray)

    /** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis (box edges are C floats). */
    private fun coefficients(inSize: Int, in0d: Double, in1d: Double, outSize: Int): Coefficients {
        val in0 = in0d.toFloat()
        val in1 = in1d.toFloat()
        val scale = (in1 - in0).toDouble() / outSize
        val filterscale = maxOf(scale, 1.0)
        val support = filterscale
        val ksize = Math.ceil(support).toInt() * 2 + 1
        val bounds = IntArray(outSize * 2)
        val kk = IntArray(outSize * ksize)
        val w = DoubleArray(ksize)
        for (xx in 0 until outSize) {
            val center = in0.toDouble() + (xx + 0.5) * scale
            val ss = 1.0 / filterscale
            val xmin = maxOf((center - support + 0.5).toInt(), 0)
            val xmax = minOf((center + support + 0.5).toInt(), inSize) - xmin
            var ww = 0.0
            for (x in 0 until xmax) {
                val t = Math.abs((x + xmin - center + 0.5) * ss)
                w[x] = if (t < 1.0) 1.0 - t else 0.0
                ww += w[x]
            }
            for (x in 0 until xmax) {
                val k = if (ww != 0.0) w[x] / ww else w[x]
                kk[xx * ksize + x] = if (k < 0) (-0.5 + k * (1 shl PRECISION_BITS)).toInt()
                                     else (0.5 + k * (1 shl PRECISION_BITS)).toInt()
            }
            bounds[xx * 2] = xmin
            bounds[xx * 2 + 1] = xmax
        }
        return Coefficients(ksize, bounds, kk)
    }

    private fun clip8(ss: Int): Int = (ss shr PRECISION_BITS).coerceIn(0, 255)

    /** Pillow's `resize((r, r), BILINEAR, box)` of one 8-bit plane (`w x h`, row-major), horizontal pass first. */
    fun resamplePlane(plane: IntArray, w: Int, h: Int, box: DoubleArray, r: Int): IntArray {
        val needH = r != w || box[0] != 0.0 || box[2] != r.toDouble()
        val needV = r != h || box[1] != 0.0 || box[3] != r.toDouble()
        if (!needH && !needV) return plane.copyOf()
        val horiz = coefficients(w, box[0], box[2], r)
        val vert = coefficients(h, box[1], box[3], r)
        val bv = vert.bounds.copyOf()
        var src = plane
        var sw = w
        if (needH) {
            val first = bv[0]
            val last = bv[r * 2 - 2] + bv[r * 2 - 1]
            for (i in 0 until r) bv[i * 2] -= first
            val rows = last - first
            val tmp = IntArray(r * rows)
            for (yy in 0 until rows) {
                val row = (yy + first) * w
                for (xx in 0 until r) {
                    val xmin = horiz.bounds[xx * 2]
                    val xmax = horiz.bounds[xx * 2 + 1]
                    val k = xx * horiz.ksize
                    var ss = 1 shl (PRECISION_BITS - 1)
                    for (x in 0 until xmax) ss += plane[row + x + xmin] * horiz.kk[k + x]
                    tmp[yy * r + xx] = clip8(ss)
                }
            }
            src = tmp
            sw = r
        }
        if (!needV) return src
        val out = IntArray(r * r)
        for (yy in 0 until r) {
            val ymin = bv[yy * 2]
            val ymax = bv[yy * 2 + 1]
            val k = yy * vert.ksize
            for (xx in 0 until sw) {
                var ss = 1 shl (PRECISION_BITS - 1)
                for (y in 0 until ymax) ss += src[(y + ymin) * sw + xx] * vert.kk[k + y]
                out[yy * r + xx] = clip8(ss)
            }
        }
        return out
    }

    /** The colour planes of ARGB pixels: one (Pillow's luma) for a grey gallery, else R, G, B; alpha dropped. */
    fun planes(argb: IntArray, grey: Boolean): Array<IntArray> {
        val n = argb.size
        if (grey) {
            val g = IntArray(n)
            for (i in 0 until n) {
                val p = argb[i]
                g[i] = ((p shr 16 and 0xff) * 19595 + (p shr 8 and 0xff) * 38470 + (p and 0xff) * 7471 + 0x8000) ushr 16
            }
            return arrayOf(g)
        }
        return Array(3) { c -> IntArray(n) { i -> argb[i] shr (16 - 8 * c) and 0xff } }
    }

    /** ARGB pixels (`w x h`) -> the R x R 8-bit planes the model sees (steps 1-3). */
    fun modelPixels(argb: IntArray, w: Int, h: Int, input: Input): Array<IntArray> {
        val r = input.resolution
        val box = cropBox(w, h, r)
        return planes(argb, input.grey).map { resamplePlane(it, w, h, box, r) }.toTypedArray()
    }

    /** 8-bit planes -> the float32 model input (steps 4-5). */
    fun modelInput(pixels: Array<IntArray>, input: Input, nhwc: Boolean, pixelInput: Boolean): FloatArray {
        val r = input.resolution
        val n = r * r
        val x = FloatArray(3 * n)
        for (c in 0 until 3) {
            val p = pixels[if (pixels.size == 1) 0 else c]
            for (i in 0 until n) {
                val v = if (pixelInput) p[i].toFloat() else (p[i] / 255f - input.mean[c]) / input.std[c]
                if (nhwc) x[i * 3 + c] = v else x[c * n + i] = v
            }
        }
        return x
    }
}
