package dev.edgequery.demo

import java.io.File
import javax.imageio.ImageIO

/**
 * Checks [Preprocess] against files the Python side wrote, with nothing but the JDK (no JUnit, no
 * Android): the JUnit test runs these checks in Gradle, and tests/test_android_preprocess.py
 * compiles this file with Debian's kotlinc and runs [main] on a machine without the Android SDK.
 *
 *   fixture DIR            DIR/test_image.png must pre-process to DIR/expected.json's input.values
 *   pixels PNG TXT GREY    PNG's model pixels (R x R, resolution from the file) must equal TXT's
 */
object FixtureCheck {
    /** ARGB pixels of an image file, as Android's Bitmap.getPixels gives them. */
    fun argb(file: File): Triple<IntArray, Int, Int> {
        val im = ImageIO.read(file) ?: error("$file is not an image ImageIO reads")
        val px = IntArray(im.width * im.height)
        for (y in 0 until im.height) for (x in 0 until im.width) {
            val raster = im.raster
            px[y * im.width + x] = if (raster.numBands == 1) {
                val g = raster.getSample(x, y, 0)
                (0xff shl 24) or (g shl 16) or (g shl 8) or g
            } else {
                (0xff shl 24) or (raster.getSample(x, y, 0) shl 16) or (raster.getSample(x, y, 1) shl 8) or
                    raster.getSample(x, y, 2)
            }
        }
        return Triple(px, im.width, im.height)
    }

    private fun numbersAfter(json: String, key: String): List<Double> {
        val start = json.indexOf("\"$key\"").also { require(it >= 0) { "no \"$key\" in the JSON" } }
        val open = json.indexOf('[', start)
        val close = json.indexOf(']', open)
        return json.substring(open + 1, close).split(',').map { it.trim().toDouble() }
    }

    /** The largest |difference| between the fixture image's model input (NCHW) and expected.json's. */
    fun fixture(dir: File): Double {
        val json = File(dir, "expected.json").readText()
        val mean = numbersAfter(json, "mean").map { it.toFloat() }.toFloatArray()
        val std = numbersAfter(json, "std").map { it.toFloat() }.toFloatArray()
        val expected = numbersAfter(json, "values")
        val (px, w, h) = argb(File(dir, "test_image.png"))
        val input = Preprocess.Input(w, true, mean, std)
        val x = Preprocess.modelInput(Preprocess.modelPixels(px, w, h, input), input, nhwc = false, pixelInput = false)
        require(x.size == expected.size) { "${x.size} input values, expected ${expected.size}" }
        var worst = 0.0  // a loop, not maxOf: Debian's kotlinc is 1.3
        for (i in x.indices) worst = maxOf(worst, Math.abs(x[i] - expected[i]))
        return worst
    }

    /** How many of an image's R x R model pixels differ from the space-separated ones in [txt]. */
    fun pixels(png: File, txt: File, grey: Boolean, resolution: Int): Int {
        val (px, w, h) = argb(png)
        val input = Preprocess.Input(resolution, grey, floatArrayOf(0f, 0f, 0f), floatArrayOf(1f, 1f, 1f))
        val got = Preprocess.modelPixels(px, w, h, input).flatMap { it.toList() }
        val want = txt.readText().trim().split(Regex("\\s+")).map { it.toInt() }
        require(got.size == want.size) { "${got.size} pixels, expected ${want.size}" }
        return got.indices.count { got[it] != want[it] }
    }

    @JvmStatic
    fun main(args: Array<String>) {
        when (args.getOrNull(0)) {
            "fixture" -> {
                val diff = fixture(File(args[1]))
                println("fixture max abs input difference $diff")
                if (diff > 1e-4) System.exit(1)
            }
            "pixels" -> {
                val bad = pixels(File(args[1]), File(args[2]), args[3] == "grey", args[4].toInt())
                println("${args[1]}: $bad pixels differ")
                if (bad != 0) System.exit(1)
            }
            else -> {
                System.err.println("usage: fixture DIR | pixels PNG TXT grey|rgb RESOLUTION")
                System.exit(2)
            }
        }
    }
}
