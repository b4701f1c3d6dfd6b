//! The layout rules of docs/ARCHITECTURE.md, checked on the source tree so that they stay
//! true:
//!
//! * one name per op: every `kernels/<op>.cu` has its CPU twin `src/backend/cpu/<op>.rs`,
//!   its launches `src/backend/cuda/<op>.rs` and its op module `src/ops/<op>.rs`, and
//!   every op module has a CPU twin;
//! * imports run one way: a module uses only modules of lower layers (the one exception:
//!   `tensor` holds the backends' storage types), and no cycle of files exists other than
//!   among `tensor` and the backends' storage;
//! * a source file over 600 lines says at its top why it is long;
//! * the code cites docs inside the repository, not `../shared/docs`.
//!
//! `cargo test --release --test architecture -- --ignored --nocapture` prints the module
//! graph (Mermaid) that docs/ARCHITECTURE.md shows.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Kernel files that are not ops, with the reason.
const NOT_OPS: &[(&str, &str)] =
    &[("tensor_core_check", "a device self-test run when a CUDA device opens (backend/cuda/device.rs), not an op")];

/// Op modules without a kernel file yet, with the reason.
const OPS_WITHOUT_KERNEL: &[(&str, &str)] =
    &[("contact_head", "on CUDA the CPU head runs on host copies of the probabilities")];

/// Layers from the bottom up: a module may use modules of lower layers only.
/// `data` is a leaf (readers, tokenizer) that the model and everything above use.
const LAYERS: &[(&str, u32)] = &[
    ("tensor", 0),
    ("data", 0),
    ("backend::cpu", 1),
    ("backend", 2),
    ("backend::seq_layout", 2),
    ("backend::cuda", 2),
    ("autograd", 3),
    ("ops", 4),
    ("model", 5),
    ("metrics", 5),
    ("optim", 6),
    ("plot", 7),
    ("train", 8),
    ("embed", 9),
];

/// The allowed upward arrows: the tensor type holds the backends' storage.
const STORAGE_EXCEPTION: &[(&str, &str)] = &[("tensor", "backend::cpu"), ("tensor", "backend::cuda")];

/// Lines above which a file must say why it is long.
const LONG_FILE_LINES: usize = 600;

fn stems(dir: &str, ext: &str) -> BTreeSet<String> {
    fs::read_dir(Path::new(ROOT).join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(ext).map(str::to_owned)
        })
        .filter(|s| s != "mod")
        .collect()
}

#[test]
fn every_kernel_has_a_cpu_twin_a_launcher_and_an_op_module_of_the_same_name() {
    let kernels = stems("kernels", ".cu");
    let (cpu, cuda, ops) = (stems("src/backend/cpu", ".rs"), stems("src/backend/cuda", ".rs"), stems("src/ops", ".rs"));
    let mut missing = Vec::new();
    for k in &kernels {
        if NOT_OPS.iter().any(|(n, _)| n == k) {
            continue;
        }
        for (set, place) in [(&cpu, "src/backend/cpu"), (&cuda, "src/backend/cuda"), (&ops, "src/ops")] {
            if !set.contains(k) {
                missing.push(format!("kernels/{k}.cu has no {place}/{k}.rs"));
            }
        }
    }
    for op in &ops {
        if !cpu.contains(op) {
            missing.push(format!("src/ops/{op}.rs has no CPU twin src/backend/cpu/{op}.rs"));
        }
        if !kernels.contains(op) && !OPS_WITHOUT_KERNEL.iter().any(|(n, _)| n == op) {
            missing
                .push(format!("src/ops/{op}.rs has no kernels/{op}.cu (list it in OPS_WITHOUT_KERNEL with a reason)"));
        }
    }
    assert!(kernels.len() >= 15, "kernels/ lists only {kernels:?}");
    assert!(missing.is_empty(), "one name per op, everywhere:\n  {}", missing.join("\n  "));
}

// ---------------------------------------------------------------------------------
// The module graph
// ---------------------------------------------------------------------------------

/// Every library source file as its module path (`["backend", "cuda", "linear"]`).
fn library_modules() -> BTreeMap<Vec<String>, PathBuf> {
    let src = Path::new(ROOT).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts[0] == "main" || parts[0] == "cli" {
                continue; // the binary, a separate crate over the library
            }
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            if !parts.is_empty() {
                out.insert(parts, path); // the crate root only declares the modules
            }
        }
    }
    out
}

/// The code of a file without comments, string contents or its `#[cfg(test)]` modules.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_str, mut block_depth) = (false, 0usize);
    while let Some(c) = chars.next() {
        if block_depth > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block_depth -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block_depth += 1;
            }
            continue;
        }
        if in_str {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_str = false;
                out.push('"');
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block_depth = 1;
            }
            // A char literal such as '"' must not open a string.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with("\"'") || rest.starts_with("\\\"") {
                    chars.next();
                    chars.next();
                }
                out.push('\'');
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expand a `use` tree (`crate::a::{b, c::{d, e}}`) into its paths.
fn expand_use_tree(tree: &str) -> Vec<String> {
    // Drop renames (`x as y`) and whitespace.
    let mut words = Vec::new();
    let mut tokens = tree.split_whitespace();
    while let Some(t) = tokens.next() {
        if t == "as" {
            let renamed = tokens.next().unwrap_or("");
            // Keep the punctuation after the new name (`,` or `}`).
            words.push(renamed.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_').to_owned());
        } else {
            words.push(t.to_owned());
        }
    }
    let tree = words.concat();
    let Some(open) = tree.find('{') else { return vec![tree] };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .filter(|i| !i.is_empty())
        .flat_map(|i| expand_use_tree(&i))
        .map(|p| if p == "self" { prefix.to_owned() } else { format!("{prefix}::{p}") })
        .collect()
}

/// The paths a file's code refers to: every `use` tree and every `crate::…`/`super::…`
/// path written inline.
fn referenced_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
            paths.extend(expand_use_tree(&after[..end]));
        }
        rest = &after[end.min(after.len())..];
    }
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(root) {
            let start = from + i;
            let before = code[..start].chars().last();
            let len = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - start);
            let path = code[start..start + len].trim_end_matches(':');
            if path.len() > root.len() - 2 && before.is_none_or(|c| !c.is_alphanumeric() && c != '_' && c != ':') {
                paths.push(path.to_owned());
            }
            from = start + len.max(1);
        }
    }
    paths
}

/// The module a path names, as the longest prefix that is a file of the crate.
fn resolve(
    from: &[String],
    is_dir_module: bool,
    path: &str,
    modules: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let (mut base, rest): (Vec<String>, &[&str]) = match segs.first()? {
        &"crate" => (Vec::new(), &segs[1..]),
        &"super" => {
            let mut b = from.to_vec();
            if !is_dir_module {
                b.pop();
            }
            b.pop();
            let mut r = &segs[1..];
            while r.first() == Some(&"super") {
                b.pop();
                r = &r[1..];
            }
            (b, r)
        }
        _ => return None,
    };
    base.extend(rest.iter().map(|s| s.to_string()));
    (1..=base.len()).rev().map(|n| base[..n].to_vec()).find(|m| modules.contains_key(m))
}

/// File-level arrows `from → to` (no arrow to a module's own ancestors: `super::` names).
fn file_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = library_modules();
    let mut graph = BTreeMap::new();
    for (m, path) in &modules {
        let is_dir_module = matches!(path.file_stem().and_then(|s| s.to_str()), Some("mod" | "lib"));
        let code = code_of(&fs::read_to_string(path).unwrap());
        let mut to = BTreeSet::new();
        for p in referenced_paths(&code) {
            if let Some(t) = resolve(m, is_dir_module, &p, &modules) {
                if &t != m && !m.starts_with(&t) {
                    to.insert(t);
                }
            }
        }
        graph.insert(m.clone(), to);
    }
    graph
}

/// A module's layer name: the longest entry of [`LAYERS`] that prefixes it.
fn layer_of(m: &[String]) -> (&'static str, u32) {
    let joined = m.join("::");
    LAYERS
        .iter()
        .filter(|(name, _)| joined == *name || joined.starts_with(&format!("{name}::")))
        .max_by_key(|(name, _)| name.len())
        .copied()
        .unwrap_or_else(|| panic!("module {joined} is in no layer of LAYERS"))
}

#[test]
fn imports_only_go_down_the_layers() {
    let mut wrong = BTreeSet::new();
    for (from, tos) in file_graph() {
        let (lf, rf) = layer_of(&from);
        for to in tos {
            let (lt, rt) = layer_of(&to);
            if lf == lt || rt < rf || STORAGE_EXCEPTION.contains(&(lf, lt)) {
                continue;
            }
            wrong.insert(format!("{} → {} ({lf} is not above {lt})", from.join("::"), to.join("::")));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that run up or across the layers:\n  {}",
        wrong.into_iter().collect::<Vec<_>>().join("\n  ")
    );
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let Some((w, _)) = s.graph.get_key_value(w) else { continue };
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_file_cycles_but_tensor_and_backend_storage() {
    let graph = file_graph();
    let bad: Vec<String> = cycles(&graph)
        .into_iter()
        .filter(|c| !c.iter().all(|m| m[0] == "tensor" || m[0] == "backend"))
        .map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" ↔ "))
        .collect();
    assert!(bad.is_empty(), "import cycles:\n  {}", bad.join("\n  "));
}

#[test]
fn the_graph_reader_sees_real_imports() {
    // A self-check of the parser on this crate: the arrows every engineer knows.
    let g = file_graph();
    let has = |a: &str, b: &str| {
        let a: Vec<String> = a.split("::").map(str::to_owned).collect();
        let b: Vec<String> = b.split("::").map(str::to_owned).collect();
        g.get(&a).is_some_and(|t| t.contains(&b))
    };
    assert!(has("ops::layer_norm", "backend::cpu::layer_norm"));
    assert!(has("ops::layer_norm", "backend::cuda::layer_norm"));
    assert!(has("ops::layer_norm", "autograd"));
    assert!(has("tensor", "backend::cpu"));
    assert!(!has("backend::cuda::layer_norm", "autograd"));
    let code = code_of(
        "use crate::{a::b, c::{d, e as f}};\n// crate::x::y\nlet s = \"crate::z\";\n#[cfg(test)]\nuse crate::t;",
    );
    assert_eq!(referenced_paths(&code), ["crate::a::b", "crate::c::d", "crate::c::e"]);
}

#[test]
#[ignore = "prints the module graph for docs/ARCHITECTURE.md"]
fn print_module_graph() {
    let mut arrows = BTreeSet::new();
    for (from, tos) in file_graph() {
        let (lf, _) = layer_of(&from);
        for to in tos {
            let (lt, _) = layer_of(&to);
            if lf != lt {
                arrows.insert((lf, lt));
            }
        }
    }
    println!("```mermaid\nflowchart TD");
    for (a, b) in arrows {
        let id = |s: &str| s.replace("::", "_");
        println!("    {}[{a}] --> {}[{b}]", id(a), id(b));
    }
    println!("```");
}

// ---------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------

fn files_under(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![Path::new(ROOT).join(dir)];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)) {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn long_source_files_say_why_at_their_top() {
    let mut silent = Vec::new();
    for path in files_under("src", &["rs"]) {
        let text = fs::read_to_string(&path).unwrap();
        let lines = text.lines().count();
        let head: String = text.lines().take(12).collect::<Vec<_>>().join("\n");
        if lines > LONG_FILE_LINES && !head.contains("Long because") {
            silent.push(format!("{} ({lines} lines)", path.strip_prefix(ROOT).unwrap().display()));
        }
    }
    assert!(
        silent.is_empty(),
        "files over {LONG_FILE_LINES} lines without a `Long because …` line at the top:\n  {}",
        silent.join("\n  ")
    );
}

#[test]
fn code_cites_docs_inside_the_repository() {
    let mut outside = Vec::new();
    for dir in ["src", "kernels", "tests", "benches", "tools"] {
        for path in files_under(dir, &["rs", "cu", "cuh", "py", "sh"]) {
            let text = fs::read_to_string(&path).unwrap();
            if path.ends_with("tests/architecture.rs") {
                continue;
            }
            if text.contains("DESIGN.md") || text.contains("shared/docs") {
                outside.push(path.strip_prefix(ROOT).unwrap().display().to_string());
            }
        }
    }
    assert!(
        outside.is_empty(),
        "cite docs/ARCHITECTURE.md instead of docs outside the repository:\n  {}",
        outside.join("\n  ")
    );
}
