package dev.edgequery.demo

import java.io.File
import org.junit.Assert.assertTrue
import org.junit.Test

/** `./gradlew test`: the committed fixture (export/fixture) pre-processes to its recorded model input. */
class PreprocessTest {
    private val fixture = File("../../export/fixture")

    @Test
    fun fixtureImageGivesTheRecordedModelInput() {
        assertTrue(FixtureCheck.fixture(fixture) <= 1e-4)
    }

    @Test
    fun aSquareImageAtTheModelsSizeIsNotResampled() {
        val plane = IntArray(32 * 32) { it % 251 }
        val out = Preprocess.resamplePlane(plane, 32, 32, Preprocess.cropBox(32, 32, 32), 32)
        assertTrue(out.contentEquals(plane))
    }
}
