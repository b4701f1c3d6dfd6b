//! The font of every picture: a DejaVu Sans subset compiled into the binary (see
//! `assets/fonts/README.md` for its source, licence and the command that made it),
//! registered as plotters' `sans-serif` family.

use anyhow::{anyhow, Result};
use plotters::style::{register_font, FontStyle};
use std::sync::OnceLock;

/// DejaVu Sans 2.37, subset to ASCII, Latin-1, Greek and a few symbols (37 KB).
pub static DEJAVU_SANS_SUBSET: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// The family name the pictures ask for.
pub const FAMILY: &str = "sans-serif";

/// Register the embedded font with plotters (once per process; later calls return the
/// first call's outcome).
pub fn register() -> Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS_SUBSET)
                .map_err(|_| "the embedded DejaVu Sans font could not be parsed".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}
