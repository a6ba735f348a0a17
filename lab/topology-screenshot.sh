#!/usr/bin/env bash
# The topology picture as SVG and HTML, opened in a real headless browser (Debian's chromium) and
# screenshotted, to check by eye that VMs, emulator cells and nodes can be told apart (contrast) and
# nothing is cut. Not part of `make test` (chromium is a large package): run it after changing
# lib/topoview.py and look at the PNGs.   Usage: bash lab/topology-screenshot.sh [HOST] [OUT_DIR]
set -euo pipefail
host=${1:-hv1}
out=${2:-/tmp/numa-k3s-topology}
here=$(cd "$(dirname "$0")/.." && pwd)
command -v chromium >/dev/null || { echo "needs chromium: apt-get install chromium" >&2; exit 2; }
mkdir -p "$out"
"$here/.venv/bin/invoke" --search-root "$here" topology --host="$host" --svg="$out/$host.svg" --html="$out/$host.html" >/dev/null
for kind in svg html; do
    # --no-sandbox: chromium refuses to run as root otherwise; the pages are our own local files.
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,2000 \
        --screenshot="$out/$host-$kind.png" "file://$out/$host.$kind" >/dev/null 2>&1
    test -s "$out/$host-$kind.png"
    echo "$out/$host-$kind.png"
done
