//! The CPU emulation of CUDA (see `cuda_host_emulation.h` beside this file): every
//! `kernels/*.cu` is compiled as host C++ by the system C++ compiler against the CUDA
//! headers (the pip toolchain of `tools/install_cuda_toolchain.sh`, or `$CUDA_HOME`),
//! linked with the launch runtime and a fake driver (`fake_driver.cpp`) into one shared
//! library with the soname `libcuda.so`, beside a fake cuBLAS (`fake_cublas.cpp`, soname
//! `libcublas.so`), and loaded with `dlopen`. Two uses:
//!
//! * kernel tests (`tests/emulated_*.rs`) launch a kernel by name with the argument list
//!   (`qf_engine::backend::cuda::launch::Arg`) and launch shape its Rust launcher uses, on
//!   host buffers, and compare with a reference;
//! * [`Emulator::install_as_cuda`] makes cudarc find the fake driver and cuBLAS, so the
//!   engine's real CUDA backend runs unchanged on the CPU (`tests/cuda_common`: the GPU
//!   suites run this way where no GPU is present).
//!
//! The libraries are cached under `$CARGO_TARGET_TMPDIR/kernel-emu/<hash of the
//! sources>`. Without a C++20 compiler or the CUDA headers the tests print `SKIP: no
//! kernel emulator: …`; with `QF_REQUIRE_CUDA_KERNELS=1` (CI) a missing header or a
//! failing compile is an error instead.
#![allow(dead_code)]

use std::ffi::{c_char, c_void, CStr, CString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use half::{bf16, f16};
use qf_engine::backend::cuda::launch::Arg;

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    u32,
    *const u64,
    *const c_char,
    *const Checks,
    *mut c_char,
    usize,
) -> i32;

/// The checks and schedule of one emulated launch (`qf_emu::Options` of
/// `cuda_host_emulation.cpp`). Each check off gives the emulation's old behaviour, so a
/// test can show that a deliberately broken kernel is caught now and was not before.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Checks {
    /// Fill static `__shared__` memory with 0xFF bytes (NaN) at every block start.
    pub poison_shared: u32,
    /// Honour the masks of `__shfl_*_sync` and `__syncwarp`.
    pub check_shfl_mask: u32,
    /// Blocks in a random order and threads interleaved at random points (seeded).
    pub random_schedule: u32,
    /// The kernels' stated preconditions (distinct rows of `scatter_add_rows`).
    pub check_preconditions: u32,
    /// The random schedule's seed.
    pub seed: u64,
}

impl Checks {
    /// Every check, and the random schedule of `seed`.
    pub fn all(seed: u64) -> Self {
        Checks { poison_shared: 1, check_shfl_mask: 1, random_schedule: 1, check_preconditions: 1, seed }
    }
    /// The emulation as it was: no poisoned static shared memory, masks ignored, blocks and
    /// threads in index order, no preconditions.
    pub fn legacy() -> Self {
        Checks { poison_shared: 0, check_shfl_mask: 0, random_schedule: 0, check_preconditions: 0, seed: 0 }
    }
}

thread_local! {
    /// The schedule of the test running on this thread ([`schedules`]): its seed and the
    /// number of launches made under it so far (each launch gets its own schedule).
    static SCHEDULE: std::cell::Cell<(Option<u64>, u64)> = const { std::cell::Cell::new((None, 0)) };
}

/// Seeds `QF_EMU_SEED` (default 1), `+1`, … : `QF_EMU_SCHEDULES` of them (default 2);
/// `QF_EMU_SCHEDULES=0`: one run in index order (the old schedule), shown as `None`.
fn schedule_seeds() -> Vec<Option<u64>> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let base: u64 = var("QF_EMU_SEED").and_then(|v| v.parse().ok()).unwrap_or(1);
    let count: u64 = var("QF_EMU_SCHEDULES").and_then(|v| v.parse().ok()).unwrap_or(2);
    if count == 0 {
        return vec![None];
    }
    (0..count).map(|i| Some(base + i)).collect()
}

/// Run a kernel test `body` under several seeded random schedules (blocks in random
/// order, threads interleaved at random points between barriers), so that a race the
/// index order hides shows as a mismatch or a report. Prints the seed of a failing run
/// (`QF_EMU_SEED=<seed> QF_EMU_SCHEDULES=1` reruns just that one).
pub fn schedules(test: &str, body: impl Fn(&'static Emulator)) {
    let Some(emu) = emulator(test) else { return };
    for seed in schedule_seeds() {
        SCHEDULE.with(|s| s.set((seed, 0)));
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(emu)));
        SCHEDULE.with(|s| s.set((None, 0)));
        if let Err(e) = run {
            match seed {
                Some(seed) => eprintln!(
                    "FAILED [{test}] under the random schedule of seed {seed} \
                     (rerun just it: QF_EMU_SEED={seed} QF_EMU_SCHEDULES=1)"
                ),
                None => eprintln!("FAILED [{test}] in index order (QF_EMU_SCHEDULES=0)"),
            }
            std::panic::resume_unwind(e);
        }
    }
}

/// The checks of the next launch on this thread: under [`schedules`], every check with a
/// seed drawn from the test's seed and the launch's number; outside, every check with
/// the index order (the old schedule).
fn current_checks() -> Checks {
    SCHEDULE.with(|s| {
        let (seed, n) = s.get();
        s.set((seed, n + 1));
        match seed {
            Some(seed) => Checks::all(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(n)),
            None => Checks { random_schedule: 0, ..Checks::all(0) },
        }
    })
}
type KindsFn = unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> usize;
type NamesFn = unsafe extern "C" fn(*mut c_char, usize) -> usize;

/// The loaded emulator library.
pub struct Emulator {
    dir: PathBuf,
    handle: usize,
    launch: LaunchFn,
    kinds: KindsFn,
    names: NamesFn,
}

// The library's entry points are plain functions; the registry is written only while
// the library loads.
unsafe impl Send for Emulator {}
unsafe impl Sync for Emulator {}

/// A launch shape: grid, block (x, y, z) and dynamic shared-memory bytes.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl Shape {
    /// `grid` blocks of `block` threads (1-D), no dynamic shared memory.
    pub fn flat(grid: u32, block: u32) -> Self {
        Shape { grid: (grid, 1, 1), block: (block, 1, 1), smem: 0 }
    }

    /// From the launcher's `cudarc` launch configuration.
    pub fn of(cfg: cudarc::driver::LaunchConfig) -> Self {
        Shape { grid: cfg.grid_dim, block: cfg.block_dim, smem: cfg.shared_mem_bytes }
    }

    pub fn with_smem(mut self, bytes: u32) -> Self {
        self.smem = bytes;
        self
    }
}

fn kind(a: &Arg) -> (char, u64) {
    match *a {
        Arg::Ptr(v) => ('P', v),
        Arg::U64(v) => ('U', v),
        Arg::I32(v) => ('I', v as i64 as u64),
        Arg::I64(v) => ('L', v as u64),
        Arg::F32(v) => ('F', v.to_bits() as u64),
    }
}

impl Emulator {
    /// Run kernel `name` (e.g. `layer_norm_forward_f32`) with `args` over `shape`.
    /// Pointers in `args` are host addresses (see [`ptr`], [`ptr_mut`]).
    pub fn launch(&self, name: &str, shape: Shape, args: &[Arg]) -> Result<(), String> {
        self.launch_with(name, shape, args, current_checks())
    }

    /// [`Emulator::launch`] with the given checks and schedule.
    pub fn launch_with(&self, name: &str, shape: Shape, args: &[Arg], checks: Checks) -> Result<(), String> {
        let (kinds, slots): (String, Vec<u64>) = args.iter().map(kind).unzip();
        let name_c = CString::new(name).map_err(|e| e.to_string())?;
        let kinds_c = CString::new(kinds).map_err(|e| e.to_string())?;
        let grid = [shape.grid.0, shape.grid.1, shape.grid.2];
        let block = [shape.block.0, shape.block.1, shape.block.2];
        let mut err = vec![0 as c_char; 1024];
        let rc = unsafe {
            (self.launch)(
                name_c.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                shape.smem,
                slots.as_ptr(),
                kinds_c.as_ptr(),
                &checks,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
        }
    }

    /// Make this emulation the process's CUDA: the kernel library (loaded already) has the
    /// soname `libcuda.so` and carries a fake driver, and the fake cuBLAS (soname
    /// `libcublas.so`) is loaded here, so cudarc's `dlopen("libcuda.so")` and
    /// `dlopen("libcublas.so")` find them (glibc returns an already loaded object whose
    /// soname matches). Call it only where no real driver is present, before cudarc first
    /// looks for one.
    pub fn install_as_cuda(&self) -> Result<(), String> {
        open_library(&self.dir.join(CUBLAS_LIB)).map(|_| ())
    }

    /// The address of a function of the library (the fake driver's `cuMemAlloc_v2`, …), for
    /// tests that drive it directly.
    pub fn symbol(&self, name: &str) -> Option<*mut c_void> {
        let c = CString::new(name).ok()?;
        let p = unsafe { libc::dlsym(self.handle as *mut c_void, c.as_ptr()) };
        (!p.is_null()).then_some(p)
    }

    /// [`Emulator::launch`] that panics with the kernel's name on an error.
    pub fn run(&self, name: &str, shape: Shape, args: &[Arg]) {
        if let Err(e) = self.launch(name, shape, args) {
            panic!("emulated launch of `{name}` failed: {e}");
        }
    }

    /// The argument kinds of a kernel (`P` pointer, `I` int, `u` unsigned, `L` long
    /// long, `U` unsigned long long, `F` float), `None` when there is no such kernel.
    pub fn kernel_kinds(&self, name: &str) -> Option<String> {
        let name_c = CString::new(name).ok()?;
        let mut out = vec![0 as c_char; 256];
        let n = unsafe { (self.kinds)(name_c.as_ptr(), out.as_mut_ptr(), out.len()) };
        (n > 0).then(|| unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned())
    }

    /// Every kernel the library holds.
    pub fn kernel_names(&self) -> Vec<String> {
        self.kernels().into_iter().map(|(_, name)| name).collect()
    }

    /// Every kernel the library holds, with its module (the stem of its `kernels/*.cu`
    /// file): `(module, name)`.
    /// The deliberately broken kernels of `tests/kernel_emu/emu_selftest.cu` are not
    /// among them.
    pub fn kernels(&self) -> Vec<(String, String)> {
        self.all_kernels().into_iter().filter(|(m, _)| m != SELFTEST_MODULE).collect()
    }

    fn all_kernels(&self) -> Vec<(String, String)> {
        let mut out = vec![0 as c_char; 1 << 16];
        unsafe { (self.names)(out.as_mut_ptr(), out.len()) };
        let all = unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned();
        all.lines().filter_map(|l| l.split_once('/')).map(|(m, n)| (m.to_string(), n.to_string())).collect()
    }
}

/// `n` elements whose storage is 16-byte aligned, as device memory is (cp.async copies
/// 16-byte blocks from aligned addresses; a `Vec<f16>` is only 2-byte aligned).
pub struct Aligned16<T: bytemuck::Pod> {
    words: Vec<u128>,
    n: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Aligned16<T> {
    pub fn from_slice(v: &[T]) -> Self {
        let bytes = std::mem::size_of_val(v);
        let mut words = vec![0u128; bytes.div_ceil(16)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut words)[..bytes].copy_from_slice(bytemuck::cast_slice(v));
        Aligned16 { words, n: v.len(), _t: std::marker::PhantomData }
    }
    pub fn as_slice(&self) -> &[T] {
        &bytemuck::cast_slice::<u128, T>(&self.words)[..self.n]
    }
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut::<u128, T>(&mut self.words)[..self.n]
    }
}

/// Host address of a buffer, as a kernel pointer argument.
pub fn ptr<T>(v: &[T]) -> Arg {
    Arg::Ptr(v.as_ptr() as u64)
}

/// Host address of a buffer the kernel writes.
pub fn ptr_mut<T>(v: &mut [T]) -> Arg {
    Arg::Ptr(v.as_mut_ptr() as u64)
}

/// The emulator, or `None` after printing `SKIP: no kernel emulator: …` (a panic
/// instead when `QF_REQUIRE_CUDA_KERNELS` is set: CI installs the headers, so there the
/// emulated kernels must run).
pub fn emulator(test: &str) -> Option<&'static Emulator> {
    static EMU: OnceLock<Result<Emulator, String>> = OnceLock::new();
    match EMU.get_or_init(build_and_load) {
        Ok(e) => Some(e),
        Err(why) => {
            let required = std::env::var("QF_REQUIRE_CUDA_KERNELS").is_ok_and(|v| !v.is_empty() && v != "0");
            if required && !why.starts_with(NO_COMPILER) {
                panic!("QF_REQUIRE_CUDA_KERNELS is set but the kernel emulator cannot be built: {why}");
            }
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIP: no kernel emulator: {why} [{test}]");
            None
        }
    }
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding `cuda_fp16.h`: `$CUDA_HOME`, `$CUDA_PATH`, the project's pip
/// toolchain, `/usr/local/cuda`.
fn cuda_include_dir() -> Result<PathBuf, String> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            candidates.push(PathBuf::from(d).join("include"));
        }
    }
    candidates.push(manifest_dir().join(".cuda/pkgs/nvidia/cu13/include"));
    candidates.push(PathBuf::from("/usr/local/cuda/include"));
    candidates.iter().find(|d| d.join("cuda_fp16.h").is_file()).cloned().ok_or_else(|| {
        format!(
            "no CUDA headers (cuda_fp16.h) in {} — run `bash tools/install_cuda_toolchain.sh`",
            candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Prefix of the error when the machine has no C++ compiler at all: the one case that
/// skips even when the emulated kernels are required (a compiler that fails does not).
const NO_COMPILER: &str = "no C++ compiler";

/// `$CXX`, else the first of g++, c++, clang++ on PATH.
fn compiler() -> Result<String, String> {
    if let Ok(cxx) = std::env::var("CXX") {
        return Ok(cxx);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    ["g++", "c++", "clang++"]
        .into_iter()
        .find(|c| std::env::split_paths(&path).any(|d| d.join(c).is_file()))
        .map(str::to_string)
        .ok_or_else(|| format!("{NO_COMPILER} (CXX unset; no g++, c++ or clang++ on PATH)"))
}

const FLAGS: &[&str] = &["-std=c++20", "-O1", "-fPIC", "-ffp-contract=off", "-Wno-unknown-pragmas", "-w"];

fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= b as u64;
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

fn sorted_files(dir: &Path, exts: &[&str]) -> Result<Vec<PathBuf>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|x| x.to_str()).is_some_and(|x| exts.contains(&x)))
        .collect();
    files.sort();
    Ok(files)
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let head: Vec<&str> = err.lines().take(30).collect();
        return Err(format!("{cmd:?} failed:\n{}", head.join("\n")));
    }
    Ok(out.stdout)
}

/// Names of the `extern "C"` kernels a preprocessed kernel file defines.
fn kernel_names_in(preprocessed: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = preprocessed;
    while let Some(i) = rest.find("extern \"C\"") {
        rest = &rest[i + "extern \"C\"".len()..];
        let decl = rest.trim_start();
        let Some(decl) = decl.strip_prefix("void") else { continue };
        let name: String = decl.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && decl.trim_start()[name.len()..].trim_start().starts_with('(') {
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    names
}

fn build_and_load() -> Result<Emulator, String> {
    let cxx = compiler()?;
    let include = cuda_include_dir()?;
    let kernels = manifest_dir().join("kernels");
    let emu_dir = manifest_dir().join("tests/kernel_emu");
    let header = emu_dir.join("cuda_host_emulation.h");
    let runtime = emu_dir.join("cuda_host_emulation.cpp");
    let driver = emu_dir.join("fake_driver.cpp");
    let cublas = emu_dir.join("fake_cublas.cpp");
    let mut sources = sorted_files(&kernels, &["cu"])?;
    if sources.is_empty() {
        return Err(format!("no kernels in {}", kernels.display()));
    }
    let selftest = emu_dir.join(format!("{SELFTEST_MODULE}.cu"));
    sources.push(selftest.clone());

    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for f in sorted_files(&kernels, &["cu", "cuh"])?.iter().chain([&header, &runtime, &driver, &cublas, &selftest]) {
        fnv1a(&mut hash, f.to_string_lossy().as_bytes());
        fnv1a(&mut hash, &std::fs::read(f).map_err(|e| format!("reading {}: {e}", f.display()))?);
    }
    fnv1a(&mut hash, cxx.as_bytes());
    fnv1a(&mut hash, FLAGS.join(" ").as_bytes());
    fnv1a(&mut hash, SHARED_SCRIPT.as_bytes());
    fnv1a(&mut hash, include.to_string_lossy().as_bytes());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kernel-emu/{hash:016x}"));
    let lib = dir.join(KERNEL_LIB);
    if !lib.is_file() || !dir.join(CUBLAS_LIB).is_file() {
        // Each process builds in its own directory (test binaries may build at the
        // same time) and renames the finished library into place.
        let work = dir.with_extension(format!("build-{}", std::process::id()));
        build(&cxx, &work, &include, &kernels, &header, &[runtime, driver], &sources)?;
        build_cublas(&cxx, &work, &include, &cublas)?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for name in [CUBLAS_LIB, KERNEL_LIB] {
            let built = work.join(name);
            std::fs::rename(&built, dir.join(name)).map_err(|e| format!("renaming {}: {e}", built.display()))?;
        }
        let _ = std::fs::remove_dir_all(&work);
    }
    load(&lib)
}

/// The module of the deliberately broken kernels that prove the emulation's checks.
pub const SELFTEST_MODULE: &str = "emu_selftest";

/// The kernels, the launch runtime and the fake driver; soname `libcuda.so`.
const KERNEL_LIB: &str = "libqf_kernel_emu.so";
/// The fake cuBLAS; soname `libcublas.so`.
const CUBLAS_LIB: &str = "libqf_cublas_emu.so";

fn build_cublas(cxx: &str, dir: &Path, include: &Path, src: &Path) -> Result<(), String> {
    let obj = dir.join("fake_cublas.o");
    run(Command::new(cxx).args(FLAGS).arg("-I").arg(include).arg("-c").arg(src).arg("-o").arg(&obj))?;
    run(Command::new(cxx).arg("-shared").arg("-Wl,-soname,libcublas.so").arg("-o").arg(dir.join(CUBLAS_LIB)).arg(&obj))
        .map(|_| ())
}

fn base_command(cxx: &str, include: &Path, kernels: &Path, header: &Path) -> Command {
    let mut cmd = Command::new(cxx);
    cmd.args(FLAGS).arg("-I").arg(include).arg("-I").arg(kernels).arg("-include").arg(header);
    cmd
}

/// Compile every kernel file (with a registration line per kernel appended) and the
/// runtime, in parallel, and link them into `dir/libqf_kernel_emu.so`.
fn build(
    cxx: &str,
    dir: &Path,
    include: &Path,
    kernels: &Path,
    header: &Path,
    runtime: &[PathBuf],
    sources: &[PathBuf],
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let compile_one = |src: &Path| -> Result<PathBuf, String> {
        let stem = src.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let pre = run(base_command(cxx, include, kernels, header).arg("-x").arg("c++").arg("-E").arg(src))?;
        let names = kernel_names_in(&String::from_utf8_lossy(&pre));
        if names.is_empty() {
            return Err(format!("{} defines no extern \"C\" kernel", src.display()));
        }
        let mut unit = format!("#define QF_EMU_MODULE \"{stem}\"\n#include \"{}\"\n", src.display());
        for n in &names {
            let _ = writeln!(unit, "QF_EMU_KERNEL({n})");
        }
        let cpp = dir.join(format!("{stem}.emu.cpp"));
        std::fs::write(&cpp, unit).map_err(|e| format!("writing {}: {e}", cpp.display()))?;
        // Each function-local static (a `__shared__` variable) in its own `.bss._ZZ…`
        // section, which the link gathers between the bounds that every block start poisons.
        let obj = dir.join(format!("{stem}.kernel.o"));
        run(base_command(cxx, include, kernels, header)
            .arg("-fdata-sections")
            .arg("-c")
            .arg(&cpp)
            .arg("-o")
            .arg(&obj))?;
        Ok(obj)
    };
    let mut jobs: Vec<PathBuf> = sources.to_vec();
    jobs.extend(runtime.iter().cloned());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(src) = jobs.get(i) else { break };
                let r = if runtime.contains(src) {
                    let stem = src.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    let obj = dir.join(format!("{stem}.o"));
                    run(base_command(cxx, include, kernels, header).arg("-c").arg(src).arg("-o").arg(&obj)).map(|_| obj)
                } else {
                    compile_one(src)
                };
                results.lock().unwrap().push(r);
            });
        }
    });
    let objects = results.into_inner().unwrap().into_iter().collect::<Result<Vec<_>, _>>()?;
    let lib = dir.join(KERNEL_LIB);
    let script = dir.join("shared.ld");
    std::fs::write(&script, SHARED_SCRIPT).map_err(|e| format!("writing {}: {e}", script.display()))?;
    run(Command::new(cxx)
        .arg("-shared")
        .arg("-Wl,-soname,libcuda.so")
        .arg(format!("-Wl,-T,{}", script.display()))
        .arg("-o")
        .arg(&lib)
        .args(&objects)
        .arg("-lpthread"))
    .map(|_| ())
}

/// Linker script (added to the default one): the function-local statics of the kernel
/// objects — the `__shared__` variables, statics here — in one output section between
/// `__qf_emu_shared_start` and `__qf_emu_shared_end` (cuda_host_emulation.cpp poisons
/// them at every block start). Function-local statics of the runtime, the fake driver or
/// the C++ library are in other objects or sections and are not touched.
const SHARED_SCRIPT: &str = "SECTIONS {
  qf_emu_shared : {
    __qf_emu_shared_start = .;
    *.kernel.o(.bss._ZZ* .data._ZZ*)
    __qf_emu_shared_end = .;
  }
} INSERT BEFORE .bss;
";

/// `dlopen` a library by path; it stays loaded for the life of the process.
fn open_library(lib: &Path) -> Result<*mut c_void, String> {
    let path = CString::new(lib.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        let why = unsafe { CStr::from_ptr(libc::dlerror()) }.to_string_lossy().into_owned();
        return Err(format!("dlopen {}: {why}", lib.display()));
    }
    Ok(handle)
}

fn load(lib: &Path) -> Result<Emulator, String> {
    let handle = open_library(lib)?;
    let sym = |name: &str| -> Result<*mut c_void, String> {
        let c = CString::new(name).map_err(|e| e.to_string())?;
        let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
        if p.is_null() {
            Err(format!("{} has no symbol {name}", lib.display()))
        } else {
            Ok(p)
        }
    };
    // The library stays loaded for the life of the test process.
    unsafe {
        Ok(Emulator {
            dir: lib.parent().map(Path::to_path_buf).unwrap_or_default(),
            handle: handle as usize,
            launch: std::mem::transmute::<*mut c_void, LaunchFn>(sym("qf_emu_launch_ex")?),
            kinds: std::mem::transmute::<*mut c_void, KindsFn>(sym("qf_emu_kernel_kinds")?),
            names: std::mem::transmute::<*mut c_void, NamesFn>(sym("qf_emu_kernel_names")?),
        })
    }
}

/// Values rounded to the compute dtype `T` and back (the inputs a half kernel sees).
pub trait Element: Copy + Default + Send + Sync + 'static {
    const SUFFIX: &'static str;
    fn from_f32(x: f32) -> Self;
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const SUFFIX: &'static str = "f32";
    fn from_f32(x: f32) -> Self {
        x
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for f16 {
    const SUFFIX: &'static str = "f16";
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl Element for bf16 {
    const SUFFIX: &'static str = "bf16";
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Convert a slice to the element type.
pub fn to_elem<T: Element>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// Convert back to f32.
pub fn to_f32<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.to_f32()).collect()
}
