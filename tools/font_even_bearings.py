"""Give every glyph of a TrueType font the same left side bearing (the median of a–z),
keeping each glyph's right side bearing: plotters' ab_glyph text drops the left side
bearing when it places a glyph, so only equal bearings space letters evenly there."""
import statistics, sys
from fontTools.ttLib import TTFont
from fontTools.pens.recordingPen import DecomposingRecordingPen
from fontTools.pens.transformPen import TransformPen
from fontTools.pens.ttGlyphPen import TTGlyphPen

src, dst = sys.argv[1], sys.argv[2]
font = TTFont(src)
glyf, hmtx, cmap = font["glyf"], font["hmtx"], font.getBestCmap()
glyph_set = font.getGlyphSet()
lower = [cmap[ord(c)] for c in "abcdefghijklmnopqrstuvwxyz"]
common = round(statistics.median(hmtx[g][1] for g in lower))
# Record every outline (components decomposed) and its bounds before changing any glyph.
outlines = {}
for name in font.getGlyphOrder():
    glyph = glyf[name]
    if glyph.numberOfContours == 0:
        continue
    glyph.recalcBounds(glyf)
    recording = DecomposingRecordingPen(glyph_set)
    glyph_set[name].draw(recording)
    outlines[name] = (recording, glyph.xMin)
for name, (recording, x_min) in outlines.items():
    advance, _ = hmtx[name]
    shift = common - x_min
    pen = TTGlyphPen(None)
    recording.replay(TransformPen(pen, (1, 0, 0, 1, shift, 0)))
    new = pen.glyph()
    new.recalcBounds(glyf)
    glyf[name] = new
    hmtx[name] = (advance + shift, common)
# kerning pairs were designed for the original bearings: drop them
for table in ("GPOS", "kern"):
    if table in font:
        del font[table]
font.save(dst)
print(f"left side bearing {common} units for every glyph")
