#!/usr/bin/env bash
# Refresh the web console's vendored front-end libraries from the npm registry. Their
# files are committed, so neither the platform nor its tests need node or a network;
# run this only to change a version.
#   htm 3.1.1 (Apache-2.0): Preact + hooks + htm in one ES module; markup as tagged
#     templates, every interpolated value put on the page as text.
#   uPlot 1.6.32 (MIT): the loss and token-length charts.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=functions/console/static/vendor
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent htm@3.1.1 uplot@1.6.32 >/dev/null && for f in *.tgz; do
  mkdir "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done)
cp "$work/htm-3.1.1/package/preact/standalone.module.js" "$vendor/preact-htm.js"
cp "$work/htm-3.1.1/package/LICENSE" "$vendor/LICENSE.htm"
cp "$work/uplot-1.6.32/package/dist/uPlot.iife.min.js" "$vendor/uPlot.iife.min.js"
cp "$work/uplot-1.6.32/package/dist/uPlot.min.css" "$vendor/uPlot.min.css"
cp "$work/uplot-1.6.32/package/LICENSE" "$vendor/LICENSE.uPlot"
