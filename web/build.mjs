// Vendors the browser runtimes into the Python package's static folder, from the pinned
// node_modules (run `npm ci` first; scripts/build_web.sh does both):
//   vendor/litert/litert.mjs   LiteRT.js bundled into one ES module (esbuild)
//   vendor/litert/wasm/        its wasm builds; loadLiteRt(dir) picks one for the browser
//   vendor/ort/                onnxruntime-web's wasm-only ES module and its wasm backend
//   vendor/VERSIONS.json       what was vendored: package versions and file hashes
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const out = join(here, "..", "edgequery", "gallery", "static", "vendor");

function version(pkg) {
  return JSON.parse(readFileSync(join(modules, pkg, "package.json"), "utf8")).version;
}

function copy(from, to, names) {
  mkdirSync(to, { recursive: true });
  for (const name of names) copyFileSync(join(from, name), join(to, name));
}

function files(dir) {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: [join(here, "src", "litert.js")], bundle: true, format: "esm", minify: true,
  outfile: join(out, "litert", "litert.mjs"), logLevel: "warning", legalComments: "none",
});
const litertWasm = join(modules, "@litertjs", "core", "wasm");
copy(litertWasm, join(out, "litert", "wasm"), readdirSync(litertWasm));
const ortDist = join(modules, "onnxruntime-web", "dist");
copy(ortDist, join(out, "ort"), ["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"]);

const hashes = Object.fromEntries(files(out).sort().map((p) => [
  relative(out, p), createHash("sha256").update(readFileSync(p)).digest("hex")]));
const manifest = {
  packages: Object.fromEntries(["@litertjs/core", "@litertjs/wasm-utils", "onnxruntime-web", "esbuild"]
    .map((p) => [p, version(p)])),
  files: hashes,
};
writeFileSync(join(out, "VERSIONS.json"), JSON.stringify(manifest, null, 2) + "\n");
const bytes = files(out).reduce((n, p) => n + statSync(p).size, 0);
console.log(`vendored ${Object.keys(hashes).length} files (${(bytes / 1e6).toFixed(1)} MB) into ${out}`);
