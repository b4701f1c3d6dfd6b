//! Memory sizes for people: printing bytes as KiB/MiB/GiB and parsing `12GB`-style limits.

use anyhow::{bail, Result};

/// Bytes in a MiB / GiB.
pub const MIB: f64 = (1u64 << 20) as f64;
pub const GIB: f64 = (1u64 << 30) as f64;

/// `1.23 GiB`, `45.6 MiB` or `789 KiB`.
pub fn fmt_bytes(b: u64) -> String {
    let x = b as f64;
    if x >= GIB {
        format!("{:.2} GiB", x / GIB)
    } else if x >= MIB {
        format!("{:.1} MiB", x / MIB)
    } else {
        format!("{:.0} KiB", x / 1024.0)
    }
}

/// Parse a memory size: `12GB`, `12GiB`, `800MB`, `12e9` (bytes). GB means GiB here as in
/// GPU spec sheets' usage for memory sizes (`12GB` = 12·2³⁰ bytes); `GiB` is accepted too.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (num, unit) = match lower.find(|c: char| c.is_ascii_alphabetic() && c != 'e') {
        Some(i) => (&lower[..i], lower[i..].trim()),
        None => (lower.as_str(), ""),
    };
    let mult: f64 = match unit {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => GIB * 1024.0,
        u => bail!("memory size `{s}`: unknown unit `{u}` (use e.g. 12GB, 800MB)"),
    };
    let v: f64 = num.trim().parse().map_err(|_| anyhow::anyhow!("memory size `{s}` is not a number with a unit"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("memory size `{s}` must be positive");
    }
    Ok((v * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_bytes("12GB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("12 GiB").unwrap(), 12 << 30);
        assert_eq!(parse_bytes("800MB").unwrap(), 800 << 20);
        assert_eq!(parse_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("12 apples").is_err());
        assert!(parse_bytes("-3GB").is_err());
    }
}
