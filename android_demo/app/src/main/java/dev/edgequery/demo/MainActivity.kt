package dev.edgequery.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import android.os.Bundle
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.ImageView
import android.widget.LinearLayout
import android.widget.TextView
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import java.io.File
import java.net.HttpURLConnection
import java.net.URL
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest
import java.util.concurrent.Executors
import org.json.JSONArray
import org.json.JSONObject
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.GpuDelegate

/**
 * Pick a photo, embed it on the phone with the server's query encoder (LiteRT), search the gallery.
 *
 * The encoder is the app-facing file of the export the server was started with (`edgequery serve
 * --export DIR`): `GET /v1/encoders` names it (NHWC, 0-255 pixels, `pixel_input`); it is
 * downloaded once, checked against its sha256 and cached.  The photo is pre-processed by
 * [Preprocess] exactly as the model card says; only the embedding and its `model_version` go to
 * `POST /v1/search`.
 */
class MainActivity : AppCompatActivity() {
    private val work = Executors.newSingleThreadExecutor()
    private lateinit var status: TextView
    private lateinit var results: LinearLayout

    private val picker = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) search(uri)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        status = findViewById(R.id.status)
        results = findViewById(R.id.results)
        findViewById<Button>(R.id.pick).setOnClickListener {
            picker.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
    }

    private fun show(text: String) = runOnUiThread { status.text = text }

    private fun search(uri: Uri) {
        val server = findViewById<EditText>(R.id.server).text.toString().trimEnd('/')
        val gpu = findViewById<CheckBox>(R.id.gpu).isChecked
        results.removeAllViews()
        work.execute {
            try {
                show("reading $server/v1/encoders ...")
                val encoder = JSONObject(get("$server/v1/encoders")).getJSONArray("encoders").let {
                    require(it.length() > 0) { "the server hands out no encoder: start it with --export DIR" }
                    it.getJSONObject(0)
                }
                val file = appFile(encoder.getJSONArray("files"))
                val model = download(server + file.getString("url"), file.getString("sha256"),
                                     encoder.getString("model_version") + "-" + file.getString("file"))
                val inp = encoder.getJSONObject("input")
                val input = Preprocess.Input(inp.getInt("resolution"), inp.getString("colour") == "grey",
                                             floats(inp.getJSONArray("mean")), floats(inp.getJSONArray("std")))
                val bitmap = decode(uri)
                runOnUiThread { findViewById<ImageView>(R.id.preview).setImageBitmap(bitmap) }
                val argb = IntArray(bitmap.width * bitmap.height)
                bitmap.getPixels(argb, 0, bitmap.width, 0, 0, bitmap.width, bitmap.height)
                val x = Preprocess.modelInput(Preprocess.modelPixels(argb, bitmap.width, bitmap.height, input), input,
                                              nhwc = file.getString("layout") == "NHWC",
                                              pixelInput = !file.isNull("pixel_input"))
                val (embedding, ms) = embed(model, x, encoder.getInt("embed_dim"), gpu)
                show("embedded on this phone in %.2f ms (median of 5, %s); searching ...".format(ms, if (gpu) "GPU" else "CPU"))
                val body = JSONObject().put("embedding", JSONArray(embedding.map { it.toDouble() }))
                    .put("model_version", encoder.getString("model_version")).put("k", 10)
                val hits = JSONObject(post("$server/v1/search", body.toString())).getJSONArray("results")
                showHits(server, hits, ms)
            } catch (e: Exception) {
                show("could not search: ${e.message}")
            }
        }
    }

    /** The app-facing file: NHWC float .tflite that takes pixels (else the first .tflite). */
    private fun appFile(files: JSONArray): JSONObject {
        val all = (0 until files.length()).map { files.getJSONObject(it) }.filter { it.getString("runtime") == "litertjs" }
        return all.firstOrNull { it.getString("layout") == "NHWC" && !it.isNull("pixel_input") } ?: all.firstOrNull()
            ?: error("the encoder has no .tflite file")
    }

    private fun embed(model: File, x: FloatArray, dim: Int, gpu: Boolean): Pair<FloatArray, Double> {
        val options = Interpreter.Options().setNumThreads(1)
        val delegate = if (gpu) GpuDelegate().also { options.addDelegate(it) } else null
        Interpreter(model, options).use { interpreter ->
            val input = ByteBuffer.allocateDirect(4 * x.size).order(ByteOrder.nativeOrder())
            input.asFloatBuffer().put(x)
            val out = Array(1) { FloatArray(dim) }
            interpreter.run(input, out)  // untimed: the first run allocates
            val ms = (0 until 5).map {
                input.rewind()
                val t0 = System.nanoTime()
                interpreter.run(input, out)
                (System.nanoTime() - t0) / 1e6
            }.sorted()
            delegate?.close()
            return out[0].copyOf() to ms[2]
        }
    }

    private fun decode(uri: Uri): Bitmap =
        if (Build.VERSION.SDK_INT >= 28) {
            ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { decoder, _, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE  // getPixels needs a software bitmap
            }.copy(Bitmap.Config.ARGB_8888, false)
        } else {
            contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it) }
        }

    private fun download(url: String, sha256: String, name: String): File {
        val file = File(cacheDir, name)
        if (!file.isFile || hex(file.readBytes()) != sha256) {
            file.writeBytes(URL(url).openStream().use { it.readBytes() })
            require(hex(file.readBytes()) == sha256) { "$url does not match the sha256 its model card lists" }
        }
        return file
    }

    private fun showHits(server: String, hits: JSONArray, ms: Double) {
        val rows = (0 until hits.length()).map { hits.getJSONObject(it) }.map { h ->
            val png = URL("$server/v1/gallery/${h.getInt("id")}/thumbnail").openStream().use { it.readBytes() }
            Triple(h, BitmapFactory.decodeByteArray(png, 0, png.size), "%s  #%d  %.3f".format(
                h.optString("label_name", "(no label)"), h.getInt("id"), h.getDouble("score")))
        }
        runOnUiThread {
            status.text = "${rows.size} results; embedded on this phone in %.2f ms".format(ms)
            for ((_, thumb, text) in rows) {
                val row = LinearLayout(this).apply { orientation = LinearLayout.HORIZONTAL }
                row.addView(ImageView(this).apply { setImageBitmap(thumb); minimumWidth = 96; minimumHeight = 96 })
                row.addView(TextView(this).apply { this.text = text; setPadding(16, 0, 0, 0) })
                results.addView(row)
            }
        }
    }

    private fun get(url: String): String = (URL(url).openConnection() as HttpURLConnection).let { c ->
        try { answer(c) } finally { c.disconnect() }
    }

    private fun post(url: String, json: String): String = (URL(url).openConnection() as HttpURLConnection).let { c ->
        try {
            c.requestMethod = "POST"
            c.doOutput = true
            c.setRequestProperty("Content-Type", "application/json")
            c.outputStream.use { it.write(json.toByteArray()) }
            answer(c)
        } finally { c.disconnect() }
    }

    /** The body of a 2xx answer; else the server's {problem, fix} as the error. */
    private fun answer(c: HttpURLConnection): String {
        if (c.responseCode in 200..299) return c.inputStream.use { it.readBytes().decodeToString() }
        val p = JSONObject(c.errorStream.use { it.readBytes().decodeToString() })
        error("${c.responseCode}: ${p.optString("problem")} (${p.optString("fix")})")
    }

    private fun floats(a: JSONArray) = FloatArray(a.length()) { a.getDouble(it).toFloat() }

    private fun hex(bytes: ByteArray) = MessageDigest.getInstance("SHA-256").digest(bytes)
        .joinToString("") { "%02x".format(it) }
}
