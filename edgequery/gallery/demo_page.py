"""The demo page served at ``/``: pick an image, see the nearest gallery items.

One self-contained HTML document (no external scripts, fonts or styles, so it works
offline and under a strict Content-Security-Policy).  It reads ``GET /v1/model`` for
the header, posts the chosen file to ``POST /v1/search/image`` and shows each hit's
thumbnail (``GET /v1/gallery/{id}/thumbnail``), class and cosine score.  Text from the
server is inserted with ``textContent`` only, never as HTML.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>edgequery gallery search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  #model { color: #555; font-size: .9rem; margin-bottom: 1.2rem; }
  form { display: flex; gap: .8rem; align-items: center; flex-wrap: wrap; padding: 1rem;
         background: #f4f4f6; border-radius: .5rem; }
  #preview { max-width: 96px; max-height: 96px; image-rendering: pixelated; display: none; }
  #status { margin: 1rem 0; min-height: 1.2rem; }
  #status.error { color: #a00; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(7.5rem, 1fr)); gap: .8rem; }
  .hit { border: 1px solid #ddd; border-radius: .4rem; padding: .4rem; text-align: center; font-size: .85rem; }
  .hit img { width: 96px; height: 96px; image-rendering: pixelated; background: #000; }
  .score { color: #555; }
</style>
</head>
<body>
<h1>edgequery gallery search</h1>
<div id="model">loading model card...</div>
<form id="form">
  <input type="file" id="file" name="image" accept="image/*" required>
  <img id="preview" alt="query image">
  <label>results <input type="number" id="k" name="k" value="10" min="1" max="100" style="width:4rem"></label>
  <button type="submit" id="search">Search</button>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}
fetch("/v1/model").then((r) => r.json()).then((card) => {
  const g = card.gallery, idx = card.index;
  $("model").textContent = `gallery model ${g.arch} (model_version ${g.model_version}), ` +
    `${idx.items} items in a faiss ${idx.factory} index; input ${g.input.resolution}px ${g.input.colour}. ` +
    `Accepted query model versions: ${card.accepted_model_versions.map((a) => a.model_version).join(", ")}`;
  $("k").max = card.limits.max_k;
}).catch((e) => status("could not read /v1/model: " + e, true));
$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (f) { $("preview").src = URL.createObjectURL(f); $("preview").style.display = "inline"; }
});
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = $("file").files[0];
  if (!f) { status("choose an image first", true); return; }
  const body = new FormData();
  body.append("image", f, f.name);
  body.append("k", $("k").value);
  status("searching...", false);
  $("results").replaceChildren();
  try {
    const r = await fetch("/v1/search/image", { method: "POST", body });
    const data = await r.json();
    if (!r.ok) { status(`${r.status}: ${data.problem} (${data.fix})`, true); return; }
    status(`${data.results.length} results in ${data.took_ms.toFixed(1)} ms`, false);
    for (const h of data.results) {
      const card = document.createElement("div");
      card.className = "hit";
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
  } catch (e) {
    status("request failed: " + e, true);
  }
});
</script>
</body>
</html>
"""
