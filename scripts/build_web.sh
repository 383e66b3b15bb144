#!/usr/bin/env bash
# Vendor the on-device page's browser runtimes (LiteRT.js, onnxruntime-web) from npm into
# edgequery/gallery/static/vendor/, from the pinned web/package-lock.json: no CDN at run time.
# Needs Node >= 18 and npm (Debian: apt-get install nodejs npm; this script installs them
# when run as root and they are missing). About 55 MB, 10-30 s once npm's cache is warm.
set -euo pipefail
cd "$(dirname "$0")/../web"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -q && apt-get install -y -q nodejs npm) >/dev/null
  else
    echo "build_web.sh: node and npm are needed (Debian: sudo apt-get install nodejs npm)" >&2
    exit 1
  fi
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  echo "build_web.sh: Node $(node --version) is too old; LiteRT.js's build needs Node >= 18" >&2
  exit 1
fi
# --ignore-scripts: no package runs code at install (esbuild's binary comes as an optional dependency)
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
node build.mjs
