// edgequery's page: embed a photo on this device with the exported query encoder (LiteRT.js or
// onnxruntime-web, wasm) - or upload it for the server's gallery model - and show the nearest
// gallery items.  Text from the server is inserted with textContent only, never as HTML.
import { modelInput, modelPixels } from "./preprocess.js";

const $ = (id) => document.getElementById(id);
const VENDOR = "/static/vendor";
const TIMED_RUNS = 5; // the latency shown: median of these, after one untimed run
const state = { model: null, encoders: [], choices: new Map(), runners: new Map() };

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function getJSON(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(`${url}: ${r.status} ${body.problem} (${body.fix})`);
  return body;
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// ----------------------------------------------------------------------------- runtimes

/** A runner of one encoder file: ``run(Float32Array) -> Float32Array`` (the embedding). */
async function litertRunner(file) {
  const lrt = await import(`${VENDOR}/litert/litert.mjs`);
  if (!state.litert) state.litert = lrt.loadLiteRt(`${VENDOR}/litert/wasm/`);
  await state.litert;
  const model = await lrt.loadAndCompile(file.url, { accelerator: "wasm" });
  const shape = file.input_shape;
  return {
    name: "LiteRT.js (wasm)",
    async run(x) {
      const input = new lrt.Tensor(x, shape);
      try {
        const outputs = await model.run([input]);
        const out = Float32Array.from(outputs[0].toTypedArray());
        outputs.forEach((t) => t.delete());
        return out;
      } finally {
        input.delete();
      }
    },
  };
}

async function ortRunner(file) {
  const ort = await import(`${VENDOR}/ort/ort.wasm.min.mjs`);
  ort.env.wasm.wasmPaths = `${VENDOR}/ort/`;
  ort.env.wasm.numThreads = 1; // as the Python runtimes are timed: one thread
  const session = await ort.InferenceSession.create(file.url, { executionProviders: ["wasm"] });
  const shape = file.input_shape.map((d) => (typeof d === "number" ? d : 1)); // "batch" -> 1
  return {
    name: "onnxruntime-web (wasm)",
    async run(x) {
      const out = await session.run({ [file.input_name]: new ort.Tensor("float32", x, shape) });
      return Float32Array.from(out[file.output_name].data);
    },
  };
}

async function runner(choice) {
  const key = `${choice.encoder.model_version}/${choice.file.file}`;
  if (!state.runners.has(key)) {
    const make = choice.file.runtime === "litertjs" ? litertRunner : ortRunner;
    state.runners.set(key, make(choice.file).catch((e) => { state.runners.delete(key); throw e; }));
  }
  return state.runners.get(key);
}

// ----------------------------------------------------------------------------- the photo

/** The chosen file's RGBA pixels at full size, refused above the server's pixel limit. */
async function decode(file) {
  const bitmap = await createImageBitmap(file, { premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const { width: w, height: h } = bitmap;
  const limit = state.model.limits.max_pixels;
  if (w * h > limit) {
    bitmap.close();
    throw new Error(`the photo is ${w}x${h} = ${w * h} pixels, above this server's limit of ${limit}: downscale it`);
  }
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return { w, h, rgba: ctx.getImageData(0, 0, w, h, { colorSpace: "srgb" }).data };
}

/** Embed ``file`` with ``choice`` on this device: the embedding, its input and the latency. */
async function embedOnDevice(file, choice) {
  const { w, h, rgba } = await decode(file);
  const input = choice.encoder.input;
  const pixels = modelPixels(rgba, w, h, input);
  const x = modelInput(pixels, input, choice.file.layout, choice.file.pixel_input);
  const run = await runner(choice);
  const embedding = await run.run(x); // untimed: the first run allocates
  const ms = [];
  for (let i = 0; i < TIMED_RUNS; i++) {
    const t0 = performance.now();
    await run.run(x);
    ms.push(performance.now() - t0);
  }
  return { embedding, pixels, input: x, runtime: run.name, ms: median(ms), size: [w, h] };
}

// ----------------------------------------------------------------------------- the page

function describeModel() {
  const card = state.model, g = card.gallery, idx = card.index;
  $("model").textContent = `gallery model ${g.arch} (model_version ${g.model_version}), ` +
    `${idx.items} items in a faiss ${idx.factory} index; input ${g.input.resolution}px ${g.input.colour}. ` +
    `Accepted query model versions: ${card.accepted_model_versions.map((a) => a.model_version).join(", ")}`;
  $("k").max = card.limits.max_k;
}

function fillChoices(listing) {
  const select = $("runtime");
  const label = { litertjs: "LiteRT.js", onnxruntime_web: "onnxruntime-web" };
  for (const encoder of listing.encoders) {
    for (const file of encoder.files) {
      const value = `${encoder.model_version}/${file.file}`;
      state.choices.set(value, { encoder, file });
      const option = new Option(`this device: ${label[file.runtime]}, ${encoder.arch} ` +
                                `${encoder.model_version} (${file.file}, ${file.layout})`, value);
      option.disabled = !listing.browser_runtimes;
      select.append(option);
    }
  }
  select.append(new Option(`the server: ${state.model.gallery.arch} (uploads the photo)`, "server"));
  const first = [...select.options].find((o) => !o.disabled);
  select.value = first.value;
  const packages = listing.browser_runtimes;
  $("runtimes").textContent = !listing.encoders.length
    ? "No query encoder is served for on-device embedding (start the server with --export DIR)."
    : packages ? `Browser runtimes: ${Object.entries(packages).map(([p, v]) => `${p} ${v}`).join(", ")}.`
      : listing.note;
}

function showResults(data, how) {
  status(`${data.results.length} results in ${data.took_ms.toFixed(1)} ms`, false);
  $("timing").textContent = how;
  for (const h of data.results) {
    const card = document.createElement("div");
    card.className = "hit";
    card.dataset.id = h.id;
    const img = document.createElement("img");
    img.src = `/v1/gallery/${h.id}/thumbnail`;
    img.alt = h.label_name || "item " + h.id;
    const name = document.createElement("div");
    name.className = "label";
    name.textContent = h.label_name || "(no label)";
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${h.id} · ${h.score.toFixed(3)}`;
    card.append(img, name, score);
    $("results").append(card);
  }
}

async function searchOnServer(file, k) {
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("k", k);
  const r = await fetch("/v1/search/image", { method: "POST", body });
  return [r, "embedded on the server by the gallery model"];
}

async function searchOnDevice(file, k, choice) {
  status(`embedding on this device with ${choice.file.file}...`, false);
  const e = await embedOnDevice(file, choice);
  window.edgequery.last = { ...e, embedding: Array.from(e.embedding), input: Array.from(e.input),
                            pixels: e.pixels.map((p) => Array.from(p)), model_version: choice.encoder.model_version };
  const r = await fetch("/v1/search", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ embedding: Array.from(e.embedding), model_version: choice.encoder.model_version,
                           k: Number(k) }),
  });
  return [r, `embedded on this device by ${e.runtime} in ${e.ms.toFixed(2)} ms (median of ${TIMED_RUNS} runs; ` +
             `photo ${e.size[0]}x${e.size[1]} -> ${choice.encoder.input.resolution}px ${choice.encoder.input.colour})`];
}

async function onSubmit(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) { status("choose a photo first", true); return; }
  const mode = $("runtime").value, k = $("k").value;
  $("results").replaceChildren();
  $("timing").textContent = "";
  status("searching...", false);
  try {
    const [r, how] = mode === "server" ? await searchOnServer(file, k)
      : await searchOnDevice(file, k, state.choices.get(mode));
    const data = await r.json();
    if (!r.ok) { status(`${r.status}: ${data.problem} (${data.fix})`, true); return; }
    showResults(data, how);
    window.edgequery.results = data.results;
  } catch (e) {
    status(`could not search: ${e.message || e}`, true);
  }
}

/** The current photo embedded by a choice, then ``n`` more timed runs of its input
 *  (benchmarks/browser_demo.py calls it): the embedding, the runtime's name and each run's ms. */
async function bench(choiceValue, n) {
  const choice = state.choices.get(choiceValue);
  const e = await embedOnDevice($("file").files[0], choice);
  const run = await runner(choice), ms = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await run.run(e.input);
    ms.push(performance.now() - t0);
  }
  return { runtime: run.name, embedding: Array.from(e.embedding), ms };
}

window.edgequery = { ready: false, last: null, results: null, bench, choices: () => [...state.choices.keys()] };

$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (f) { $("preview").src = URL.createObjectURL(f); $("preview").style.display = "inline"; }
});
$("form").addEventListener("submit", onSubmit);

Promise.all([getJSON("/v1/model"), getJSON("/v1/encoders")]).then(([model, listing]) => {
  state.model = model;
  describeModel();
  fillChoices(listing);
  window.edgequery.ready = true;
}).catch((e) => status(`could not read the server's model card: ${e.message || e}`, true));
