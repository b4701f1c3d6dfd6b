#!/usr/bin/env bash
# Rebuild assets/fonts/DejaVuSans-subset.ttf (see assets/fonts/README.md) from Debian's
# fonts-dejavu-core with fonttools' pyftsubset (`pip install fonttools`).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf}"
pyftsubset "$SRC" \
    --unicodes="U+0020-007E,U+00A0-00FF,U+0391-03C9,U+2013,U+2014,U+2018-201D,U+2026,U+2212,U+2264,U+2265,U+2248,U+00D7,U+2190-2193,U+212B,U+00C5" \
    --no-hinting --desubroutinize --layout-features='kern' \
    --output-file=assets/fonts/DejaVuSans-subset.ttf
# plotters' ab_glyph text places each glyph's ink at the pen position, dropping its left
# side bearing: give every glyph the same bearing so that letters are evenly spaced.
python3 tools/font_even_bearings.py assets/fonts/DejaVuSans-subset.ttf assets/fonts/DejaVuSans-subset.ttf
