#!/usr/bin/env bash
# Vendor onnxruntime-web's WASM backend into the web app: ./scripts/vendor_web.sh [VERSION]
# Takes the npm package at a pinned version (npm pack: the registry's tarball, checked against its integrity),
# keeps the ES module entry point and the SIMD+threads WebAssembly build only, and stores the .wasm gzipped
# (the server sends it with Content-Encoding: gzip). Updating is one command: change VERSION and run it.
set -euo pipefail
VERSION="${1:-1.31.1}"
cd "$(dirname "$0")/.."
DEST=src/evitsam/service/web/vendor
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "onnxruntime-web@$VERSION" >/dev/null && tar xzf "onnxruntime-web-$VERSION.tgz")
DIST="$WORK/package/dist"
rm -rf "$DEST" && mkdir -p "$DEST"
cp "$DIST/ort.wasm.min.mjs" "$DIST/ort-wasm-simd-threaded.mjs" "$DEST/"
gzip -9 -n -c "$DIST/ort-wasm-simd-threaded.wasm" >"$DEST/ort-wasm-simd-threaded.wasm.gz"
# The npm package names its licence (MIT) in package.json and points to the repository for the text.
LICENSE_NAME="$(node -p "require('$WORK/package/package.json').license")"
[ "$LICENSE_NAME" = "MIT" ] || { echo "onnxruntime-web $VERSION is not MIT licensed ($LICENSE_NAME): check before vendoring" >&2; exit 1; }
cat >"$DEST/LICENSE" <<'TEXT'
onnxruntime-web (https://github.com/microsoft/onnxruntime), MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
TEXT
echo "$VERSION" >"$DEST/VERSION"
du -sh "$DEST"
