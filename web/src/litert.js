// LiteRT.js as one ES module for the page (esbuild resolves its bare "@litertjs/wasm-utils" import).
export { loadLiteRt, loadAndCompile, Tensor } from "@litertjs/core";
