//! Writing L×L contact maps: CSV, NumPy `.npy`, and a PNG picture.
//!
//! * CSV: L lines of L comma-separated values (shortest round-trip decimal form).
//! * NPY: format version 1.0 (NumPy NEP 1, `numpy/lib/format.py`): the magic `\x93NUMPY`,
//!   version bytes 1, 0, a little-endian u16 header length, then the ASCII header
//!   `{'descr': '<f4', 'fortran_order': False, 'shape': (L, L), }` padded with spaces and a
//!   final newline so that the data starts at a multiple of 64 bytes; then the f32 values,
//!   little-endian, row-major.
//! * PNG (the `png` crate, 8-bit RGB): predicted probabilities in the upper triangle as a
//!   white-to-blue scale, the true contacts in the lower triangle as near-black cells (pairs not
//!   evaluated, e.g. |i − j| < 6, and the diagonal cells in light grey), a one-pixel grey line
//!   through the diagonal. Without a truth map the prediction is drawn in both triangles
//!   (mirrored from the upper one).
//!   Each residue is `scale` pixels wide; by default ⌊1000 / L⌋ and at least 1, so proteins up
//!   to 500 residues get at least 2 pixels per residue and the picture is about 1000 pixels.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

fn check_square(map: &[f32], len: usize, what: &str) -> Result<()> {
    if map.len() != len * len {
        bail!("{what} has {} values, expected L×L = {}", map.len(), len * len);
    }
    Ok(())
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::new(file))
}

// ---------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------

/// Write an L×L map as CSV, one row per line.
pub fn write_csv(path: impl AsRef<Path>, map: &[f32], len: usize) -> Result<()> {
    let path = path.as_ref();
    check_square(map, len, "contact map")?;
    let mut out = create(path)?;
    let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
        for row in map.chunks_exact(len.max(1)) {
            let line: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            writeln!(out, "{}", line.join(","))?;
        }
        out.flush()
    };
    write(&mut out).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// NPY
// ---------------------------------------------------------------------------------------

/// The bytes of a `.npy` v1.0 file holding an L×L little-endian f32 array.
pub fn encode_npy(map: &[f32], len: usize) -> Result<Vec<u8>> {
    check_square(map, len, "contact map")?;
    let header = npy_header(len);
    let mut bytes = Vec::with_capacity(header.len() + map.len() * 4);
    bytes.extend_from_slice(&header);
    for v in map {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    Ok(bytes)
}

/// Magic, version, header length and the padded dict (total a multiple of 64 bytes).
fn npy_header(len: usize) -> Vec<u8> {
    const PREFIX: usize = 10; // magic (6) + version (2) + header length (2)
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({len}, {len}), }}");
    // pad with spaces so that PREFIX + dict + padding + '\n' is a multiple of 64
    let unpadded = PREFIX + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(padding));
    let mut bytes = Vec::with_capacity(PREFIX + header.len());
    bytes.extend_from_slice(b"\x93NUMPY");
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

/// Write an L×L map as a `.npy` file (loads with `numpy.load`).
pub fn write_npy(path: impl AsRef<Path>, map: &[f32], len: usize) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_npy(map, len)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------

/// Colours of the picture (RGB).
pub const BACKGROUND: [u8; 3] = [255, 255, 255];
/// Colour of probability 1 (probability p is white blended towards it by p).
pub const PREDICTED_FULL: [u8; 3] = [8, 48, 140];
pub const TRUE_CONTACT: [u8; 3] = [40, 40, 40];
pub const NOT_EVALUATED: [u8; 3] = [232, 232, 232];
pub const DIAGONAL: [u8; 3] = [150, 150, 150];

/// An 8-bit RGB picture, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let at = 3 * (y as usize * self.width as usize + x as usize);
        [self.pixels[at], self.pixels[at + 1], self.pixels[at + 2]]
    }
}

/// Pixels per residue by default: ⌊1000 / L⌋, at least 1.
pub fn default_scale(len: usize) -> u32 {
    (1000 / len.max(1)).max(1) as u32
}

/// Draw a contact map. `pred` is L×L probabilities (upper triangle used); `truth` is L×L
/// labels 0 / 1 / other (not evaluated), e.g. [`crate::data::contacts::ContactLabels::masked`].
pub fn render_contact_image(pred: &[f32], truth: Option<&[u8]>, len: usize, scale: u32) -> Result<RgbImage> {
    check_square(pred, len, "predicted contact map")?;
    if let Some(truth) = truth {
        if truth.len() != len * len {
            bail!("true contact map has {} values, expected L×L = {}", truth.len(), len * len);
        }
    }
    if len == 0 || scale == 0 {
        bail!("cannot draw an empty contact map (L = {len}, scale = {scale})");
    }
    let side = len as u64 * scale as u64;
    if side > 32_768 {
        bail!("contact picture would be {side} pixels wide; use a smaller scale");
    }
    let side = side as u32;
    let mut pixels = Vec::with_capacity(3 * side as usize * side as usize);
    for y in 0..side {
        for x in 0..side {
            let (i, j) = ((y / scale) as usize, (x / scale) as usize);
            let colour = if i == j { diagonal_colour(x, y) } else { cell_colour(pred, truth, len, i, j) };
            pixels.extend_from_slice(&colour);
        }
    }
    Ok(RgbImage { width: side, height: side, pixels })
}

/// A diagonal cell (never evaluated): light grey, with the one-pixel separator line.
fn diagonal_colour(x: u32, y: u32) -> [u8; 3] {
    if x == y {
        DIAGONAL
    } else {
        NOT_EVALUATED
    }
}

/// Row i, column j (i ≠ j): upper triangle prediction, lower triangle truth (or the mirrored
/// prediction when there is no truth).
fn cell_colour(pred: &[f32], truth: Option<&[u8]>, len: usize, i: usize, j: usize) -> [u8; 3] {
    let (lo, hi) = (i.min(j), i.max(j));
    match truth {
        Some(truth) if i > j => match truth[i * len + j] {
            1 => TRUE_CONTACT,
            0 => BACKGROUND,
            _ => NOT_EVALUATED,
        },
        _ => probability_colour(pred[lo * len + hi]),
    }
}

/// White blended towards [`PREDICTED_FULL`] by p (clamped to [0, 1]; NaN drawn as red).
pub fn probability_colour(p: f32) -> [u8; 3] {
    if p.is_nan() {
        return [220, 0, 0];
    }
    let p = p.clamp(0.0, 1.0);
    let mut colour = [0u8; 3];
    for k in 0..3 {
        let (from, to) = (BACKGROUND[k] as f32, PREDICTED_FULL[k] as f32);
        colour[k] = (from + (to - from) * p).round() as u8;
    }
    colour
}

/// Encode a picture as PNG bytes.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, image.width, image.height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode PNG header")?;
    writer.write_image_data(&image.pixels).context("cannot encode PNG data")?;
    writer.finish().context("cannot finish PNG")?;
    Ok(bytes)
}

/// Draw a contact map (see [`render_contact_image`]) and write it as PNG; `scale` `None`
/// picks [`default_scale`].
pub fn write_png(
    path: impl AsRef<Path>,
    pred: &[f32],
    truth: Option<&[u8]>,
    len: usize,
    scale: Option<u32>,
) -> Result<()> {
    let path = path.as_ref();
    let image = render_contact_image(pred, truth, len, scale.unwrap_or(default_scale(len)))?;
    let bytes = encode_png(&image)?;
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
