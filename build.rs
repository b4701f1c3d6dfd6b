//! build.rs — compile every `kernels/*.cu` into one fatbin and embed them.
//!
//! For each `kernels/<name>.cu` this runs
//!
//! ```text
//! nvcc --fatbin -std=c++17 -O3 -lineinfo -Xptxas -v -I kernels \
//!      -gencode=arch=compute_80,code=sm_80 ... -gencode=arch=compute_90,code=sm_90 \
//!      -gencode=arch=compute_90,code=compute_90 -o $OUT_DIR/kernels/<name>.fatbin kernels/<name>.cu
//! ```
//!
//! and writes `$OUT_DIR/kernels.rs` (included by `src/backend/cuda/kernels.rs`):
//!
//! ```text
//! pub static KERNEL_MODULES: &[(&str, &[u8])] = &[("adamw", <fatbin bytes, 64-byte aligned>), ...];
//! pub const BUILT_WITH_KERNELS: bool;   // false: CPU-only build
//! pub const NVCC_VERSION: &str;         // "13.0.88", "" without nvcc
//! pub const CUDA_ARCHS: &str;           // "sm_80 sm_86 sm_89 sm_90 compute_90"
//! pub const KERNEL_BUILD_NOTE: &str;    // why there are no kernels ("" when built)
//! ```
//!
//! It also writes `$OUT_DIR/launchers.rs` (included by `src/backend/cuda/kernels.rs`): one
//! typed Rust function per kernel, generated from the `extern "C" __global__` signatures
//! of the preprocessed kernel files (`$CC -E`, or `cc`/`gcc`/`cpp`, with
//! `QF_SIGNATURES_ONLY` defined so no CUDA header is needed). A launch with the wrong
//! number or kind of arguments does not compile. See the `launchers` section below.
//!
//! nvcc is looked for in this order (first hit wins):
//!   1. `$NVCC` — a path, or a bare name looked up on PATH.  When it is set
//!      but does not exist, the search STOPS there (an explicit choice is
//!      never silently replaced): the build goes on without kernels and says
//!      so, or fails when kernels are required.  `NVCC=none` is the explicit
//!      "build without kernels".
//!   2. `$CUDA_HOME/bin/nvcc`, then `$CUDA_PATH/bin/nvcc`;
//!   3. `nvcc` on `PATH`;
//!   4. `<crate>/.cuda/pkgs/nvidia/cu13/bin/nvcc`, installed by
//!      `tools/install_cuda_toolchain.sh` (CUDA 13.0 from PyPI).
//!
//! Environment:
//!   QF_REQUIRE_CUDA_KERNELS=1  a missing nvcc or ANY compile error fails the
//!                              build with nvcc's message (CI sets it).  Without
//!                              it such a build succeeds with an empty table,
//!                              BUILT_WITH_KERNELS = false and a cargo warning.
//!   QF_CUDA_ARCHS="80;90"      SASS targets (`;`, `,` or spaces; `sm_` prefix
//!                              and an `a` suffix, e.g. 90a, allowed); PTX is
//!                              added for the highest plain target so newer GPUs
//!                              JIT it.  Default 80;86;89;90.
//!   QF_PTXAS_VERBOSE=1         print ptxas' register / spill / shared-memory
//!                              summary of every kernel as cargo warnings.
//!   NVCC_CCBIN, NVCC_PREPEND_FLAGS, NVCC_APPEND_FLAGS are read by nvcc itself.
//!
//! Fast math: no file gets `--use_fast_math` by default: every kernel is
//! tested against the fp32 CPU reference at 1e-5, and erf/exp/sincos/pow,
//! IEEE division and sqrt (LayerNorm's 1/sqrt, AdamW) must match it; the
//! kernels are memory-bound, so fast math would buy nothing.  A file whose
//! first line is exactly `// qf-build: fast-math` opts in.
//!
//! Caching: a fatbin is keyed by a hash of its source, every header in
//! kernels/, the flags and the nvcc version, so editing one kernel file
//! recompiles only that file.  Besides OUT_DIR (which differs between the dev,
//! test and release profiles) the fatbins are kept in a cache shared by all
//! profiles, `<target dir>/qf-cuda-cache/` (or `$QF_CUDA_CACHE_DIR`), so
//! `cargo build` then `cargo test` compiles the kernels once; the cache keeps
//! the 4 newest versions of each file.  Files compile in parallel on up to
//! NUM_JOBS threads (cargo's -j).

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const DEFAULT_ARCHS: &str = "80;86;89;90";
const LOCAL_NVCC: &str = ".cuda/pkgs/nvidia/cu13/bin/nvcc";
const FAST_MATH_MARKER: &str = "// qf-build: fast-math";
const INSTALL_HINT: &str = "run `bash tools/install_cuda_toolchain.sh` (CUDA 13.0 nvcc from PyPI, no root) \
                            or set NVCC / CUDA_HOME";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let kernel_dir = manifest_dir.join("kernels");

    println!("cargo:rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "QF_REQUIRE_CUDA_KERNELS",
        "QF_CUDA_ARCHS",
        "QF_PTXAS_VERBOSE",
        "NVCC_CCBIN",
        "NVCC_PREPEND_FLAGS",
        "NVCC_APPEND_FLAGS",
        "QF_CUDA_CACHE_DIR",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let required = env_flag("QF_REQUIRE_CUDA_KERNELS");
    let verbose = env_flag("QF_PTXAS_VERBOSE");

    let outcome = parse_archs().and_then(|archs| {
        let nvcc = find_nvcc(&manifest_dir)?;
        let version = nvcc_version(&nvcc.path)?;
        let modules = compile_all(&nvcc.path, &version, &archs, &kernel_dir, &out_dir, verbose)?;
        Ok((version, archs, modules))
    });

    let generated = match outcome {
        Ok((version, archs, modules)) => generated_source(&modules, true, &version, &archs.describe(), ""),
        Err(reason) => {
            if required {
                eprintln!("error: QF_REQUIRE_CUDA_KERNELS is set but the CUDA kernels could not be built:\n{reason}");
                std::process::exit(1);
            }
            let first_line = reason.lines().next().unwrap_or("").to_string();
            println!("cargo:warning=building WITHOUT CUDA kernels (CPU backend only): {first_line}");
            for line in reason.lines().skip(1).filter(|l| !l.trim().is_empty()).take(40) {
                println!("cargo:warning=  {line}");
            }
            generated_source(&[], false, "", "", &reason)
        }
    };
    write_if_changed(&out_dir.join("kernels.rs"), generated.as_bytes());

    // Typed launchers, from the kernels' signatures (needs only a C preprocessor, so
    // CPU-only builds have them too and the launch sites are type-checked everywhere).
    match launchers::generate(&kernel_dir) {
        Ok(code) => write_if_changed(&out_dir.join("launchers.rs"), code.as_bytes()),
        Err(e) => {
            eprintln!("error: cannot generate the typed CUDA kernel launchers: {e}");
            std::process::exit(1);
        }
    }
}

fn env_flag(name: &str) -> bool {
    matches!(env::var(name).as_deref().map(str::trim), Ok(v) if !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

// ---------------------------------------------------------------------------
// finding nvcc
// ---------------------------------------------------------------------------

struct Nvcc {
    path: PathBuf,
}

fn exe_name(stem: &str) -> String {
    if cfg!(windows) {
        format!("{stem}.exe")
    } else {
        stem.to_string()
    }
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn find_nvcc(manifest_dir: &Path) -> Result<Nvcc, String> {
    // 1. NVCC: explicit, never silently replaced.
    if let Some(value) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        if value == "none" {
            return Err("NVCC=none: kernels disabled explicitly".into());
        }
        let p = PathBuf::from(&value);
        if p.is_file() {
            return Ok(Nvcc { path: p });
        }
        if p.components().count() == 1 {
            if let Some(found) = search_path(&value.to_string_lossy()) {
                return Ok(Nvcc { path: found });
            }
        }
        return Err(format!("NVCC={} does not exist (unset NVCC to search CUDA_HOME, PATH and .cuda/)", p.display()));
    }

    let mut looked = Vec::new();
    // 2. CUDA_HOME / CUDA_PATH.
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var).filter(|v| !v.is_empty()) {
            let p = PathBuf::from(root).join("bin").join(exe_name("nvcc"));
            if p.is_file() {
                return Ok(Nvcc { path: p });
            }
            looked.push(format!("{var}: {} (missing)", p.display()));
        }
    }
    // 3. PATH.  Only now does PATH matter, so only now is it watched (watching
    // it always would recompile every kernel whenever PATH changes).
    println!("cargo:rerun-if-env-changed=PATH");
    if let Some(p) = search_path(&exe_name("nvcc")) {
        return Ok(Nvcc { path: p });
    }
    looked.push("PATH".into());
    // 4. The project-local PyPI toolchain.
    let local = manifest_dir.join(LOCAL_NVCC);
    // Watched even while missing, so installing the toolchain triggers a rebuild.
    println!("cargo:rerun-if-changed={LOCAL_NVCC}");
    if local.is_file() {
        return Ok(Nvcc { path: local });
    }
    looked.push(format!("{} (missing)", local.display()));
    Err(format!("nvcc not found; {INSTALL_HINT}\nlooked in: {}", looked.join("; ")))
}

/// "13.0.88" from `nvcc --version` ("... release 13.0, V13.0.88").
fn nvcc_version(nvcc: &Path) -> Result<String, String> {
    let out =
        Command::new(nvcc).arg("--version").output().map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}):\n{}{}",
            nvcc.display(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    text.lines()
        .filter_map(|l| l.rsplit_once(", V").map(|(_, v)| v.trim().to_string()))
        .next()
        .ok_or_else(|| format!("cannot parse the version of {}:\n{text}", nvcc.display()))
}

// ---------------------------------------------------------------------------
// target architectures
// ---------------------------------------------------------------------------

struct Archs {
    sass: Vec<String>,   // "80", "90a", ...
    ptx: Option<String>, // highest plain target, embedded as PTX
}

impl Archs {
    fn gencode_flags(&self) -> Vec<String> {
        let mut flags: Vec<String> =
            self.sass.iter().map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}")).collect();
        if let Some(p) = &self.ptx {
            flags.push(format!("-gencode=arch=compute_{p},code=compute_{p}"));
        }
        flags
    }

    fn describe(&self) -> String {
        let mut parts: Vec<String> = self.sass.iter().map(|a| format!("sm_{a}")).collect();
        if let Some(p) = &self.ptx {
            parts.push(format!("compute_{p}"));
        }
        parts.join(" ")
    }
}

fn parse_archs() -> Result<Archs, String> {
    let spec = env::var("QF_CUDA_ARCHS").ok().filter(|s| !s.trim().is_empty());
    let spec = spec.as_deref().unwrap_or(DEFAULT_ARCHS);
    let mut sass = Vec::new();
    for token in spec.split([';', ',', ' ']).map(str::trim).filter(|t| !t.is_empty()) {
        let t = token.trim_start_matches("sm_").trim_start_matches("compute_");
        let digits = t.trim_end_matches(['a', 'f']);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || t.len() > digits.len() + 1 {
            return Err(format!("QF_CUDA_ARCHS: cannot parse `{token}` (expected e.g. \"80;86;89;90\")"));
        }
        if !sass.iter().any(|s: &String| s == t) {
            sass.push(t.to_string());
        }
    }
    if sass.is_empty() {
        return Err("QF_CUDA_ARCHS names no architecture".into());
    }
    let ptx = sass
        .iter()
        .filter(|a| a.chars().all(|c| c.is_ascii_digit()))
        .max_by_key(|a| a.parse::<u32>().unwrap_or(0))
        .cloned();
    Ok(Archs { sass, ptx })
}

// ---------------------------------------------------------------------------
// compiling
// ---------------------------------------------------------------------------

struct Module {
    name: String,
    fatbin: PathBuf,
}

fn compile_all(
    nvcc: &Path,
    nvcc_version: &str,
    archs: &Archs,
    kernel_dir: &Path,
    out_dir: &Path,
    verbose: bool,
) -> Result<Vec<Module>, String> {
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    let entries = fs::read_dir(kernel_dir).map_err(|e| format!("cannot read {}: {e}", kernel_dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("cu") => sources.push(path),
            Some("cuh") | Some("h") => headers.push(path),
            _ => {}
        }
    }
    sources.sort();
    headers.sort();
    if sources.is_empty() {
        return Err(format!("no .cu files in {}", kernel_dir.display()));
    }

    // Every header goes into every file's cache key (conservative and cheap).
    let mut header_key = Fnv::new();
    for h in &headers {
        header_key.write(h.file_name().unwrap().to_string_lossy().as_bytes());
        header_key.write(&fs::read(h).map_err(|e| format!("cannot read {}: {e}", h.display()))?);
    }

    let fatbin_dir = out_dir.join("kernels");
    fs::create_dir_all(&fatbin_dir).map_err(|e| format!("cannot create {}: {e}", fatbin_dir.display()))?;
    let cache = shared_cache_dir(out_dir).filter(|d| fs::create_dir_all(d).is_ok());

    let jobs = env::var("NUM_JOBS").ok().and_then(|j| j.parse::<usize>().ok()).unwrap_or(1).max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<BTreeMap<usize, Result<Compiled, String>>> = Mutex::new(BTreeMap::new());
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(sources.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= sources.len() {
                    break;
                }
                let r = compile_one(
                    nvcc,
                    nvcc_version,
                    archs,
                    kernel_dir,
                    &sources[i],
                    header_key.0,
                    &fatbin_dir,
                    cache.as_deref(),
                );
                results.lock().unwrap().insert(i, r);
            });
        }
    });

    let mut modules = Vec::new();
    let mut errors = Vec::new();
    let mut compiled_now = 0;
    for (_, r) in results.into_inner().unwrap() {
        match r {
            Ok(c) => {
                if !c.cached {
                    compiled_now += 1;
                }
                for w in &c.nvcc_warnings {
                    println!("cargo:warning={}: {w}", c.module.name);
                }
                if verbose {
                    for line in ptxas_summary(&c.ptxas_log) {
                        println!("cargo:warning={}: {line}", c.module.name);
                    }
                }
                modules.push(c.module);
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(format!("nvcc failed on {} file(s):\n{}", errors.len(), errors.join("\n")));
    }
    if verbose {
        println!(
            "cargo:warning=nvcc {nvcc_version} ({}): {} kernel files, {} compiled, {} cached, {:.1} s",
            nvcc.display(),
            modules.len(),
            compiled_now,
            modules.len() - compiled_now,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(modules)
}

struct Compiled {
    module: Module,
    ptxas_log: String,
    nvcc_warnings: Vec<String>,
    cached: bool,
}

/// `<target dir>/qf-cuda-cache` (OUT_DIR is `<target dir>[/<triple>]/<profile>/build/<pkg>-<hash>/out`),
/// or `$QF_CUDA_CACHE_DIR`; `None` when OUT_DIR has an unexpected shape.
fn shared_cache_dir(out_dir: &Path) -> Option<PathBuf> {
    if let Some(dir) = env::var_os("QF_CUDA_CACHE_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let build = out_dir.ancestors().nth(2)?;
    if build.file_name()? != "build" {
        return None;
    }
    Some(out_dir.ancestors().nth(4)?.join("qf-cuda-cache"))
}

/// Keep the `keep` newest `<name>-<key>.fatbin` (and their logs) in the cache.
fn prune_cache(cache: &Path, name: &str, keep: usize) {
    let Ok(entries) = fs::read_dir(cache) else { return };
    let prefix = format!("{name}-");
    let mut versions: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let f = p.file_name().unwrap_or_default().to_string_lossy();
            // "<name>-<16 hex>.fatbin": the hex part keeps "bias" from matching "bias_gelu-…".
            f.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".fatbin"))
                .is_some_and(|k| k.len() == 16 && k.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (_, old) in versions.into_iter().skip(keep) {
        let _ = fs::remove_file(old.with_extension("ptxas.log"));
        let _ = fs::remove_file(&old);
    }
}

/// Copy `from` to `to` through a temporary file and a rename, so a reader never sees a
/// half-written file (several cargo processes may share the cache).
fn copy_atomically(from: &Path, to: &Path) -> std::io::Result<()> {
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    fs::copy(from, &tmp)?;
    fs::rename(&tmp, to)
}

#[allow(clippy::too_many_arguments)]
fn compile_one(
    nvcc: &Path,
    nvcc_version: &str,
    archs: &Archs,
    kernel_dir: &Path,
    source: &Path,
    header_key: u64,
    fatbin_dir: &Path,
    cache: Option<&Path>,
) -> Result<Compiled, String> {
    let name = source.file_stem().unwrap().to_string_lossy().into_owned();
    let text = fs::read(source).map_err(|e| format!("cannot read {}: {e}", source.display()))?;
    let fast_math = text.starts_with(FAST_MATH_MARKER.as_bytes());

    let mut args: Vec<String> =
        vec!["--fatbin".into(), "-std=c++17".into(), "-O3".into(), "-lineinfo".into(), "-Xptxas".into(), "-v".into()];
    if fast_math {
        args.push("--use_fast_math".into());
    }
    args.extend(archs.gencode_flags());

    let mut key = Fnv::new();
    key.write(&header_key.to_le_bytes());
    key.write(&text);
    key.write(nvcc.to_string_lossy().as_bytes());
    key.write(nvcc_version.as_bytes());
    for a in &args {
        key.write(a.as_bytes());
    }
    for var in ["NVCC_CCBIN", "NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"] {
        key.write(env::var(var).unwrap_or_default().as_bytes());
    }
    let key = format!("{:016x}", key.0);

    let fatbin = fatbin_dir.join(format!("{name}.fatbin"));
    let key_file = fatbin_dir.join(format!("{name}.key"));
    let log_file = fatbin_dir.join(format!("{name}.ptxas.log"));
    if fatbin.is_file() && fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        return Ok(Compiled {
            module: Module { name, fatbin },
            ptxas_log: fs::read_to_string(&log_file).unwrap_or_default(),
            nvcc_warnings: Vec::new(),
            cached: true,
        });
    }
    let cached_fatbin = cache.map(|c| c.join(format!("{name}-{key}.fatbin")));
    if let Some(cf) = cached_fatbin.as_ref().filter(|cf| cf.is_file()) {
        if copy_atomically(cf, &fatbin).is_ok() {
            let ptxas_log = fs::read_to_string(cf.with_extension("ptxas.log")).unwrap_or_default();
            let _ = fs::write(&log_file, &ptxas_log);
            let _ = fs::write(&key_file, &key);
            return Ok(Compiled {
                module: Module { name, fatbin },
                ptxas_log,
                nvcc_warnings: Vec::new(),
                cached: true,
            });
        }
    }

    let tmp = fatbin_dir.join(format!("{name}.fatbin.tmp{}", std::process::id()));
    let out = Command::new(nvcc)
        .args(&args)
        .arg("-I")
        .arg(kernel_dir)
        .arg("-o")
        .arg(&tmp)
        .arg(source)
        .output()
        .map_err(|e| format!("{name}.cu: cannot run {}: {e}", nvcc.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        let messages: Vec<&str> = stdout.lines().chain(stderr.lines()).filter(|l| !is_ptxas_info(l)).collect();
        return Err(format!("--- {} ({}):\n{}", source.display(), out.status, messages.join("\n")));
    }
    fs::rename(&tmp, &fatbin).map_err(|e| format!("cannot write {}: {e}", fatbin.display()))?;
    let ptxas_log: String =
        stdout.lines().chain(stderr.lines()).filter(|l| is_ptxas_info(l)).collect::<Vec<_>>().join("\n");
    let nvcc_warnings = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !is_ptxas_info(l) && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let _ = fs::write(&log_file, &ptxas_log);
    let _ = fs::write(&key_file, &key);
    if let (Some(cache), Some(cf)) = (cache, cached_fatbin.as_ref()) {
        // Best effort: a failure here only costs a recompilation later.
        let _ = fs::write(cf.with_extension("ptxas.log"), &ptxas_log);
        if copy_atomically(&fatbin, cf).is_ok() {
            prune_cache(cache, &name, 4);
        }
    }
    Ok(Compiled { module: Module { name, fatbin }, ptxas_log, nvcc_warnings, cached: false })
}

/// Lines of `-Xptxas -v` output (the "info" lines and their indented
/// continuation "N bytes stack frame, ...").
fn is_ptxas_info(line: &str) -> bool {
    line.starts_with("ptxas info") || line.trim_start().contains("bytes stack frame")
}

/// One line per (kernel, arch): registers, stack, spills, shared memory.
fn ptxas_summary(log: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current: Option<(String, String)> = None; // (function, arch)
    let mut stack = String::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let func = rest.split('\'').next().unwrap_or("").to_string();
            let arch = rest.split("for '").nth(1).and_then(|s| s.split('\'').next()).unwrap_or("").to_string();
            current = Some((func, arch));
        } else if line.contains("bytes stack frame") {
            stack = line.trim().to_string();
        } else if let Some(rest) = line.split("Used ").nth(1) {
            if let Some((func, arch)) = current.take() {
                lines.push(format!("{arch} {func}: {} ; {stack}", rest.trim()));
            }
        }
    }
    lines
}

// ---------------------------------------------------------------------------
// generated Rust
// ---------------------------------------------------------------------------

fn generated_source(modules: &[Module], built: bool, version: &str, archs: &str, note: &str) -> String {
    let mut s = String::new();
    s.push_str("// @generated by build.rs — do not edit.\n\n");
    s.push_str(
        "/// A kernel image with the alignment the CUDA driver prefers for fatbins.\n\
         #[repr(C, align(64))]\n\
         pub struct AlignedImage<B: ?Sized>(pub B);\n\n",
    );
    s.push_str("/// (file stem of kernels/<name>.cu, fatbin image) for every kernel file.\n");
    // A static, not a const: every use of a const may instantiate its own copy
    // of the (megabytes of) images; a static exists once.
    s.push_str("pub static KERNEL_MODULES: &[(&str, &[u8])] = &[\n");
    for m in modules {
        let _ = writeln!(
            s,
            "    ({:?}, {{ const IMAGE: &AlignedImage<[u8]> = &AlignedImage(*include_bytes!({:?})); &IMAGE.0 }}),",
            m.name,
            m.fatbin.to_string_lossy()
        );
    }
    s.push_str("];\n\n");
    let _ = writeln!(s, "/// Whether build.rs compiled the CUDA kernels (false: CPU-only build).");
    let _ = writeln!(s, "pub const BUILT_WITH_KERNELS: bool = {built};\n");
    let _ = writeln!(s, "/// nvcc's version (\"13.0.88\"), empty without kernels.");
    let _ = writeln!(s, "pub const NVCC_VERSION: &str = {version:?};\n");
    let _ = writeln!(s, "/// Targets in every fatbin, e.g. \"sm_80 sm_86 sm_89 sm_90 compute_90\".");
    let _ = writeln!(s, "pub const CUDA_ARCHS: &str = {archs:?};\n");
    let _ = writeln!(s, "/// Why the build has no kernels (empty when it has them).");
    let _ = writeln!(s, "pub const KERNEL_BUILD_NOTE: &str = {note:?};");
    s
}

fn write_if_changed(path: &Path, contents: &[u8]) {
    if fs::read(path).ok().as_deref() != Some(contents) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// FNV-1a, 64 bit: a stable hash for the fatbin cache keys.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

// ---------------------------------------------------------------------------
// typed launchers
// ---------------------------------------------------------------------------

mod launchers {
    //! For every `extern "C" __global__ void name(params)` of `kernels/<module>.cu`, a
    //! Rust function `kernels::<module>::<name>(dev, cfg, args…)` whose parameters have the
    //! kernel's types: `int` → `i32`, `long long` → `i64`, `unsigned long long` → `u64`,
    //! `float` → `f32`, `E*` → `Ptr<E>` (E = `f32`, `half::f16`, `half::bf16`, `i32`,
    //! `Void` for `void*`). A kernel defined for the three compute dtypes
    //! (`name_f32`, `name_f16`, `name_bf16`, identical but for the element type `T`)
    //! becomes one function `name` whose `T*` parameters are `TPtr`: pointers that carry
    //! their dtype, from which the function picks the variant (and which must agree).

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::process::Command;

    #[derive(Clone, Debug, PartialEq)]
    struct Param {
        ctype: String,
        name: String,
    }

    #[derive(Clone, Debug)]
    struct Kernel {
        name: String,
        params: Vec<Param>,
    }

    const SUFFIXES: [(&str, &str); 3] = [("f32", "float"), ("f16", "__half"), ("bf16", "__nv_bfloat16")];

    pub fn generate(kernel_dir: &Path) -> Result<String, String> {
        let mut files: Vec<_> = std::fs::read_dir(kernel_dir)
            .map_err(|e| format!("{}: {e}", kernel_dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        files.sort();
        let mut out = String::from("// Generated by build.rs from the kernels' signatures. Do not edit.\n");
        let mut table = String::new();
        for file in files {
            let module = file.file_stem().and_then(|s| s.to_str()).ok_or("bad kernel file name")?.to_string();
            let text = preprocess(&file, kernel_dir)?;
            let kernels = parse_kernels(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            out += &module_code(&module, &kernels)?;
            for k in &kernels {
                table += &format!("    (\"{module}\", \"{}\", \"{}\"),\n", k.name, kinds(k)?);
            }
        }
        out += &format!(
            "\n/// Every kernel the launchers above were generated for: (module, kernel, argument\n/// kinds: P pointer, I int, L long long, U unsigned long long, F float).\npub static LAUNCHER_SIGNATURES: &[(&str, &str, &str)] = &[\n{table}];\n"
        );
        Ok(out)
    }

    /// The argument kinds of a kernel, in the letters of the emulator's launch check.
    fn kinds(k: &Kernel) -> Result<String, String> {
        k.params
            .iter()
            .map(|p| {
                let t = rust_type(&p.ctype)?;
                Ok(match t.as_str() {
                    "i32" | "u32" => 'I',
                    "i64" => 'L',
                    "u64" => 'U',
                    "f32" => 'F',
                    _ => 'P',
                })
            })
            .collect()
    }

    /// The kernel file expanded by a C preprocessor (macros instantiate the dtype variants).
    fn preprocess(file: &Path, include: &Path) -> Result<String, String> {
        let mut candidates: Vec<(String, Vec<&str>)> = Vec::new();
        if let Ok(cc) = std::env::var("CC") {
            candidates.push((cc, vec!["-E"]));
        }
        candidates.push(("cc".into(), vec!["-E"]));
        candidates.push(("gcc".into(), vec!["-E"]));
        candidates.push(("clang".into(), vec!["-E"]));
        candidates.push(("cpp".into(), vec![]));
        let mut tried = Vec::new();
        for (prog, first) in candidates {
            let out = Command::new(&prog)
                .args(&first)
                .args(["-P", "-x", "c++", "-DQF_SIGNATURES_ONLY", "-I"])
                .arg(include)
                .arg(file)
                .output();
            match out {
                Ok(o) if o.status.success() => return Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
                Ok(o) => {
                    tried.push(format!("{prog}: {}", String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or("")))
                }
                Err(e) => tried.push(format!("{prog}: {e}")),
            }
        }
        Err(format!("no C preprocessor could expand {} (tried {})", file.display(), tried.join("; ")))
    }

    fn parse_kernels(text: &str) -> Result<Vec<Kernel>, String> {
        const KEY: &str = "extern \"C\" __global__ void";
        let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let mut kernels = Vec::new();
        let mut rest = flat.as_str();
        while let Some(at) = rest.find(KEY) {
            rest = rest[at + KEY.len()..].trim_start();
            if let Some(after) = rest.strip_prefix("__launch_bounds__") {
                let close = after.find(')').ok_or("unclosed __launch_bounds__")?;
                rest = after[close + 1..].trim_start();
            }
            let open = rest.find('(').ok_or("kernel without parameter list")?;
            let name = rest[..open].trim().to_string();
            let close = rest[open..].find(')').ok_or("unclosed parameter list")? + open;
            let params = rest[open + 1..close]
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty() && *p != "void")
                .map(parse_param)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("kernel `{name}`: {e}"))?;
            kernels.push(Kernel { name, params });
            rest = &rest[close..];
        }
        Ok(kernels)
    }

    /// `const float* __restrict__ x` → (`float*`, `x`): qualifiers dropped, pointer kept.
    fn parse_param(p: &str) -> Result<Param, String> {
        let p = p.replace('*', " * ");
        let words: Vec<&str> = p
            .split_whitespace()
            .filter(|w| !matches!(*w, "const" | "__restrict__" | "__restrict" | "volatile"))
            .collect();
        let (name, ty) = words.split_last().ok_or_else(|| format!("empty parameter `{p}`"))?;
        Ok(Param { ctype: ty.join(" ").replace(" *", "*"), name: name.to_string() })
    }

    /// The Rust type of a C parameter type.
    fn rust_type(ctype: &str) -> Result<String, String> {
        let elem = |t: &str| -> Result<&'static str, String> {
            Ok(match t {
                "float" => "f32",
                "__half" => "half::f16",
                "__nv_bfloat16" => "half::bf16",
                "int" => "i32",
                "unsigned char" | "uint8_t" => "u8",
                "unsigned int" | "uint32_t" => "u32",
                "void" => "Void",
                other => return Err(format!("no Rust element type for `{other}*`")),
            })
        };
        Ok(match ctype {
            "int" => "i32".into(),
            "unsigned int" | "uint32_t" => "u32".into(),
            "long long" | "int64_t" => "i64".into(),
            "unsigned long long" | "uint64_t" => "u64".into(),
            "float" => "f32".into(),
            t if t.ends_with('*') => format!("Ptr<{}>", elem(t.trim_end_matches('*').trim())?),
            other => return Err(format!("no Rust type for the kernel parameter type `{other}`")),
        })
    }

    /// A parameter name that is a Rust keyword gets a trailing underscore.
    fn rust_name(name: &str) -> String {
        match name {
            "type" | "ref" | "in" | "loop" | "match" | "mod" | "move" | "fn" | "use" | "where" | "self" | "box" => {
                format!("{name}_")
            }
            n => n.to_string(),
        }
    }

    /// The positions where the dtype variants (`(suffix, kernel)`, at least two) differ
    /// only in `T`, or `None` when the kernels are not such a family.
    fn family_positions(variants: &[(&str, &Kernel)]) -> Option<Vec<bool>> {
        let n = variants[0].1.params.len();
        if variants.len() < 2 || variants.iter().any(|(_, k)| k.params.len() != n) {
            return None;
        }
        let c_type = |suf: &str| SUFFIXES.iter().find(|(s, _)| *s == suf).map(|(_, c)| format!("{c}*"));
        let mut is_t = vec![false; n];
        for (i, slot) in is_t.iter_mut().enumerate() {
            let types: Vec<&str> = variants.iter().map(|(_, k)| k.params[i].ctype.as_str()).collect();
            if types.iter().all(|t| *t == types[0]) {
                continue;
            }
            if variants.iter().all(|(suf, k)| Some(&k.params[i].ctype) == c_type(suf).as_ref()) {
                *slot = true;
            } else {
                return None;
            }
        }
        Some(is_t)
    }

    /// `(base, suffix)` when `name` ends in a dtype suffix.
    fn split_suffix(name: &str) -> Option<(&str, &'static str)> {
        SUFFIXES.iter().find_map(|(suf, _)| name.strip_suffix(&format!("_{suf}")[..]).map(|b| (b, *suf)))
    }

    fn module_code(module: &str, kernels: &[Kernel]) -> Result<String, String> {
        let by_name: BTreeMap<&str, &Kernel> = kernels.iter().map(|k| (k.name.as_str(), k)).collect();
        let mut done = std::collections::BTreeSet::new();
        let mut code = format!("\n/// Launchers of `kernels/{module}.cu`.\npub mod {module} {{\n    #![allow(clippy::too_many_arguments, unused_imports)]\n    use super::super::launch::{{launch, family_variant, KernelArg, Ptr, TPtr, Void}};\n    use super::super::CudaDevice;\n    use anyhow::Result;\n    use cudarc::driver::LaunchConfig;\n");
        for k in kernels {
            if done.contains(&k.name) {
                continue;
            }
            let family = split_suffix(&k.name).and_then(|(base, _)| {
                let variants: Vec<(&str, &Kernel)> = SUFFIXES
                    .iter()
                    .filter_map(|(suf, _)| by_name.get(format!("{base}_{suf}").as_str()).map(|k| (*suf, *k)))
                    .collect();
                family_positions(&variants).map(|pos| (base.to_string(), variants, pos))
            });
            match family {
                Some((base, variants, is_t)) => {
                    for (_, v) in &variants {
                        done.insert(v.name.clone());
                    }
                    let sufs: Vec<&str> = variants.iter().map(|(s, _)| *s).collect();
                    code += &family_fn(module, &base, &sufs, variants[0].1, &is_t)?;
                }
                None => {
                    done.insert(k.name.clone());
                    code += &plain_fn(module, k)?;
                }
            }
        }
        code += "}\n";
        Ok(code)
    }

    fn signature_doc(k: &Kernel) -> String {
        let params: Vec<String> = k.params.iter().map(|p| format!("{} {}", p.ctype, p.name)).collect();
        format!("`{}({})`", k.name, params.join(", "))
    }

    fn args_list(k: &Kernel) -> String {
        k.params.iter().map(|p| format!("{}.arg()", rust_name(&p.name))).collect::<Vec<_>>().join(", ")
    }

    fn plain_fn(module: &str, k: &Kernel) -> Result<String, String> {
        let params = k
            .params
            .iter()
            .map(|p| Ok(format!("{}: {}", rust_name(&p.name), rust_type(&p.ctype)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(format!(
            "\n    /// {}.\n    pub fn {}(dev: &CudaDevice, cfg: LaunchConfig, {}) -> Result<()> {{\n        launch(dev, \"{module}\", \"{}\", cfg, &[{}])\n    }}\n",
            signature_doc(k),
            k.name,
            params.join(", "),
            k.name,
            args_list(k)
        ))
    }

    fn family_fn(module: &str, base: &str, sufs: &[&str], first: &Kernel, is_t: &[bool]) -> Result<String, String> {
        let f32_variant = first;
        let mut params = Vec::new();
        let mut t_names = Vec::new();
        for (p, &t) in f32_variant.params.iter().zip(is_t) {
            let name = rust_name(&p.name);
            if t {
                params.push(format!("{name}: TPtr"));
                t_names.push(format!("{name}.dtype()"));
            } else {
                params.push(format!("{name}: {}", rust_type(&p.ctype)?));
            }
        }
        let generic: Vec<String> = f32_variant
            .params
            .iter()
            .zip(is_t)
            .map(|(p, &t)| format!("{} {}", if t { "T*".to_string() } else { p.ctype.clone() }, p.name))
            .collect();
        Ok(format!(
            "\n    /// `{base}_{{{}}}({})`: the variant of the `T*` arguments' dtype.\n    pub fn {base}(dev: &CudaDevice, cfg: LaunchConfig, {}) -> Result<()> {{\n        let name = family_variant(\"{base}\", &[{}])?;\n        launch(dev, \"{module}\", &name, cfg, &[{}])\n    }}\n",
            sufs.join(","),
            generic.join(", "),
            params.join(", "),
            t_names.join(", "),
            args_list(f32_variant)
        ))
    }
}
