//! The CUDA kernels as a whole, on the CPU emulation of `tests/kernel_emu`: every kernel
//! file registers its kernels, and every `launch(…)` call in `src/backend/cuda/` names a
//! kernel that exists, in the module it is loaded from, with the argument kinds the
//! kernel takes. The kernels' results are checked kernel by kernel in
//! `tests/emulated_*.rs`, the backend as a whole in `tests/cuda_*.rs`.

mod kernel_emu;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kernel_emu::{emulator, Shape};
use qf_engine::backend::cuda::launch::Arg;

#[test]
fn every_kernel_file_registers_its_kernels() {
    let Some(emu) = emulator("every_kernel_file_registers_its_kernels") else { return };
    let names = emu.kernel_names();
    assert!(names.iter().any(|n| n == "layer_norm_forward_f32"), "{names:?}");
    // Every kernel file contributes, each kernel once (the per-file coverage checks of
    // tests/emulated_*.rs then hold each file's list to the kernels they test).
    let modules: std::collections::BTreeSet<String> = emu.kernels().into_iter().map(|(m, _)| m).collect();
    let files = std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "cu"))
        .count();
    assert_eq!(modules.len(), files, "{modules:?}");
    eprintln!("{} kernels in {} files", names.len(), modules.len());
    assert_eq!(emu.kernel_kinds("layer_norm_forward_f32").as_deref(), Some("PPPPPPIIF"));
    let err = emu.launch("layer_norm_forward_f32", Shape::flat(1, 32), &[Arg::I32(1)]).unwrap_err();
    assert!(err.contains("takes arguments (PPPPPPIIF) but the launch passes (I)"), "{err}");
}

// ---------------------------------------------------------------------------------
// Every launch site in src/backend/cuda against the signature of the kernel it names.
//
// The Rust launchers pass raw argument lists (`&[p(x)?, int(rows)?, Arg::F32(eps)]`);
// a wrong count, order of kinds, kernel name or module would only show on a GPU. This
// reads each `launch(dev, "module", name, shape, args)` call in the source, resolves
// the kernel name (a literal, `kname("op", dtype)` for every dtype the module has, or a
// `let name = kname(…)` above the call) and the argument kinds (`p`/`p_opt`/`NULL`/
// `Arg::Ptr` pointer, `int`/`Arg::I32` int, `long`/`Arg::I64` long long, `Arg::F32`
// float, `Arg::U64` unsigned long long; an `&args` vector is followed through its
// `vec![…]` and `args.extend(…)` lines), and compares with the kinds and module the
// compiled kernel has.
// ---------------------------------------------------------------------------------

/// Source with `//` comments removed (string literals kept).
fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut in_str = false;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if c == '/' && chars.peek() == Some(&'/') {
            for n in chars.by_ref() {
                if n == '\n' {
                    out.push('\n');
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The text between the bracket that opens at `open` and its partner, and the index after
/// the partner.
fn bracketed(src: &str, open: usize) -> (&str, usize) {
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut i = open;
    while i < bytes.len() {
        let c = bytes[i];
        if in_str {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'(' | b'[' | b'{' => depth += 1,
                b')' | b']' | b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        return (&src[open + 1..i], i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    panic!("unbalanced brackets after byte {open}");
}

/// Split at top-level commas; empty trailing pieces dropped.
fn split_top_level(list: &str) -> Vec<String> {
    let (mut parts, mut cur, mut depth, mut in_str) = (Vec::new(), String::new(), 0i32, false);
    let mut prev = ' ';
    for c in list.chars() {
        if in_str {
            in_str = !(c == '"' && prev != '\\');
        } else {
            match c {
                '"' => in_str = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur).trim().to_string());
                    prev = c;
                    continue;
                }
                _ => {}
            }
        }
        cur.push(c);
        prev = c;
    }
    parts.push(cur.trim().to_string());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The kind letter of one argument expression, or `None` when it is none of the helpers.
fn arg_kind(expr: &str) -> Option<char> {
    let e = expr.trim();
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| e.starts_with(p));
    if starts(&["p(", "p_opt(", "Arg::Ptr("]) || e == "NULL" {
        Some('P')
    } else if starts(&["int(", "Arg::I32("]) {
        Some('I')
    } else if starts(&["long(", "Arg::I64("]) {
        Some('L')
    } else if starts(&["Arg::F32("]) {
        Some('F')
    } else if starts(&["Arg::U64("]) {
        Some('U')
    } else {
        None
    }
}

/// Kinds of a list of argument expressions; `fn_kinds` resolves `helper(…)` calls that
/// return argument arrays (e.g. `consts_args(c)`).
fn list_kinds(items: &[String], fn_kinds: &BTreeMap<String, String>) -> Result<String, String> {
    let mut kinds = String::new();
    for item in items {
        if let Some(k) = arg_kind(item) {
            kinds.push(k);
        } else if let Some(k) = item.split('(').next().and_then(|f| fn_kinds.get(f.trim())) {
            kinds.push_str(k);
        } else {
            return Err(format!("argument `{item}` is not built with p/p_opt/NULL/int/long/Arg::*"));
        }
    }
    Ok(kinds)
}

/// `fn NAME(…) -> [Arg; N] { [ … ] }` helpers of a file: name → kinds.
fn array_helpers(src: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (at, _) in src.match_indices("fn ") {
        let rest = &src[at + 3..];
        let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(sig_end) = rest.find('{') else { continue };
        if !rest[..sig_end].contains("-> [Arg;") {
            continue;
        }
        let body_open = at + 3 + sig_end;
        let (body, _) = bracketed(src, body_open);
        if let Some(lb) = body.find('[') {
            let (items, _) = bracketed(body, lb);
            if let Ok(k) = list_kinds(&split_top_level(items), &BTreeMap::new()) {
                out.insert(name, k);
            }
        }
    }
    out
}

/// Kinds of the `args` vector a launch passes as `&args`: its `let mut args = vec![…]`
/// (the closest one above `at`) and the `args.extend(…)` calls between it and `at`.
fn vector_kinds(src: &str, at: usize, fn_kinds: &BTreeMap<String, String>) -> Result<String, String> {
    let let_at = src[..at].rfind("let mut args = vec!").ok_or("no `let mut args = vec![…]` above `&args`")?;
    let open = let_at + src[let_at..].find('[').ok_or("vec! without [")?;
    let (items, mut pos) = bracketed(src, open);
    let mut kinds = list_kinds(&split_top_level(items), fn_kinds)?;
    while let Some(off) = src[pos..at].find("args.extend(") {
        let open = pos + off + "args.extend".len();
        let (inner, next) = bracketed(src, open);
        let inner = inner.trim();
        let items = match inner.strip_prefix('[') {
            Some(_) => split_top_level(bracketed(inner, 0).0),
            None => vec![inner.to_string()],
        };
        kinds.push_str(&list_kinds(&items, fn_kinds)?);
        pos = next;
    }
    Ok(kinds)
}

/// The first string literal in an expression.
fn string_literal(expr: &str) -> Option<&str> {
    let start = expr.find('"')? + 1;
    let len = expr[start..].find('"')?;
    Some(&expr[start..start + len])
}

/// Kernel names a launch's name expression can take.
fn kernel_names(name_expr: &str, src: &str, at: usize, suffixes: &[&str]) -> Result<Vec<String>, String> {
    let e = name_expr.trim().trim_start_matches('&');
    let kname_base = |expr: &str| -> Option<Vec<String>> {
        let base = string_literal(expr.split_once("kname(")?.1)?;
        Some(suffixes.iter().map(|s| format!("{base}_{s}")).collect())
    };
    if e.starts_with("kname(") {
        return kname_base(e).ok_or_else(|| format!("cannot read `{e}`"));
    }
    if e.starts_with('"') {
        return string_literal(e).map(|n| vec![n.to_string()]).ok_or_else(|| format!("cannot read `{e}`"));
    }
    // A variable: `let <var> = kname("…", …)` above the call, or `let <var> = match … {
    // … => "kernel", … }` (every identifier-like string literal of the match).
    let pattern = format!("let {e} = ");
    let let_at = src[..at].rfind(&pattern).ok_or_else(|| format!("cannot resolve kernel name `{e}`"))?;
    let rest = &src[let_at + pattern.len()..];
    if rest.starts_with("match ") {
        let open = let_at + pattern.len() + rest.find('{').ok_or("match without a body")?;
        let (body, _) = bracketed(src, open);
        let names: Vec<String> = body
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .map(str::to_string)
            .collect();
        return if names.is_empty() { Err(format!("no kernel names in `match` of `{e}`")) } else { Ok(names) };
    }
    let line = rest.lines().next().unwrap_or_default();
    kname_base(line).ok_or_else(|| format!("cannot resolve kernel name `{e}` from `{line}`"))
}

/// Check the launch sites of `(file name, source)` pairs: the number of (site, kernel)
/// pairs checked and the problems found.
fn check_launch_sites(emu: &kernel_emu::Emulator, files: &[(String, String)]) -> (usize, Vec<String>) {
    let modules: BTreeMap<String, String> = emu.kernels().into_iter().map(|(m, n)| (n, m)).collect();
    let (mut checked, mut problems) = (0usize, Vec::new());
    for (fname, raw) in files {
        let src = strip_comments(raw);
        let helpers = array_helpers(&src);
        for (at, _) in src.match_indices("launch(") {
            let before = src[..at].chars().next_back().unwrap_or(' ');
            if before.is_alphanumeric() || before == '_' || before == '.' || src[..at].ends_with("fn ") {
                continue; // another function (`b.launch(`, `fn launch(`, …)
            }
            let (inner, _) = bracketed(&src, at + "launch".len());
            let parts = split_top_level(inner);
            let site = format!("{fname}:{}", src[..at].lines().count());
            let resolved = resolve_launch(&parts, &src, at, &helpers);
            let (module, names, kinds) = match resolved {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("{site}: {e}"));
                    continue;
                }
            };
            let mut found = 0;
            for name in &names {
                let Some(want) = emu.kernel_kinds(name) else { continue };
                found += 1;
                checked += 1;
                if want != kinds {
                    problems.push(format!("{site}: `{name}` takes ({want}) but the launch passes ({kinds})"));
                }
                let home = modules.get(name).map(String::as_str).unwrap_or("?");
                if home != module {
                    problems.push(format!(
                        "{site}: `{name}` lives in module `{home}`, the launch loads it from `{module}`"
                    ));
                }
            }
            if found == 0 {
                problems.push(format!("{site}: no compiled kernel named {names:?}"));
            }
        }
    }
    (checked, problems)
}

/// Module, possible kernel names and argument kinds of one `launch(…)` call's arguments.
fn resolve_launch(
    parts: &[String],
    src: &str,
    at: usize,
    helpers: &BTreeMap<String, String>,
) -> Result<(String, Vec<String>, String), String> {
    if parts.len() != 5 {
        return Err(format!("launch(…) with {} arguments", parts.len()));
    }
    let module = string_literal(&parts[1]).ok_or_else(|| format!("module `{}` is not a literal", parts[1]))?;
    let names = kernel_names(&parts[2], src, at, &["f32", "f16", "bf16"])?;
    let args = parts[4].trim();
    let kinds = if args == "&args" {
        vector_kinds(src, at, helpers)?
    } else if let Some(list) = args.strip_prefix('&').filter(|a| a.starts_with('[')) {
        list_kinds(&split_top_level(bracketed(list, 0).0), helpers)?
    } else {
        return Err(format!("argument list `{args}` is neither a literal `&[…]` nor `&args`"));
    };
    Ok((module.to_string(), names, kinds))
}

#[test]
fn every_launch_site_passes_the_arguments_its_kernel_takes() {
    let Some(emu) = emulator("every_launch_site_passes_the_arguments_its_kernel_takes") else { return };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/backend/cuda");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let files: Vec<(String, String)> = paths
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n != "launch.rs"))
        .map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(f).unwrap()))
        .collect();
    let (checked, problems) = check_launch_sites(emu, &files);
    eprintln!("{checked} (launch site, kernel) pairs checked in {} files", files.len());
    assert!(problems.is_empty(), "launch sites that disagree with their kernels:\n{}", problems.join("\n"));
    // 126 (site, kernel) pairs today — 37 launch sites, most of them once per dtype (the
    // flash kernels once per dtype and head dim): a parser that silently skipped sites
    // would fall below this.
    assert!(checked >= 126, "only {checked} (launch site, kernel) pairs were checked");
}

#[test]
fn the_launch_site_check_catches_wrong_kinds_names_and_modules() {
    let Some(emu) = emulator("the_launch_site_check_catches_wrong_kinds_names_and_modules") else { return };
    let src = r#"
        fn consts() -> [Arg; 2] { [Arg::F32(a), Arg::F32(b)] }
        fn ok(dev: &CudaDevice) -> Result<()> {
            launch(dev, "layer_norm", &kname("layer_norm_forward", dt)?, cfg,
                   &[p(&y)?, p(&m)?, p(&r)?, p(x)?, p(w)?, p(b)?, int(rows)?, int(dim)?, Arg::F32(eps)])?;
            // eps passed as a long: wrong kind
            launch(dev, "layer_norm", "layer_norm_forward_f32", cfg,
                   &[p(&y)?, p(&m)?, p(&r)?, p(x)?, p(w)?, p(b)?, int(rows)?, int(dim)?, long(eps)])?;
            launch(dev, "bias", "layer_norm_forward_f32", cfg,
                   &[p(&y)?, p(&m)?, p(&r)?, p(x)?, p(w)?, p(b)?, int(rows)?, int(dim)?, Arg::F32(eps)])?;
            launch(dev, "layer_norm", "no_such_kernel", cfg, &[p(&y)?])?;
            let mut args = vec![p(&y)?, p(&m)?, p(&r)?, p(x)?, p(w)?, p(b)?, int(rows)?];
            args.extend(consts());
            launch(dev, "layer_norm", "layer_norm_forward_f32", cfg, &args)?;
            let name = match (a, b) {
                (DType::F32, DType::F16) => "cast_f32_to_f16",
                (DType::F16, DType::F32) => "cast_f16_to_f32",
                (a, b) => bail!("no CUDA conversion from {a} to {b}"),
            };
            launch(dev, "cast", name, cfg, &[Arg::Ptr(o), Arg::Ptr(i), int(n)?])
        }
    "#;
    let (checked, problems) = check_launch_sites(emu, &[("synthetic.rs".to_string(), src.to_string())]);
    assert_eq!(checked, 3 + 1 + 1 + 1 + 2, "{problems:?}");
    let expect = [
        "synthetic.rs:7: `layer_norm_forward_f32` takes (PPPPPPIIF) but the launch passes (PPPPPPIIL)",
        "synthetic.rs:9: `layer_norm_forward_f32` lives in module `layer_norm`, the launch loads it from `bias`",
        "synthetic.rs:11: no compiled kernel named [\"no_such_kernel\"]",
        "synthetic.rs:14: `layer_norm_forward_f32` takes (PPPPPPIIF) but the launch passes (PPPPPPIFF)",
        "synthetic.rs:20: `cast_f32_to_f16` takes (PPL) but the launch passes (PPI)",
        "synthetic.rs:20: `cast_f16_to_f32` takes (PPL) but the launch passes (PPI)",
    ];
    assert_eq!(problems, expect);
}
