//! The module graph, read from the source: no import cycle between sibling modules, no
//! transport imports another, and the library exposes no module of the binary or the tests.
//! `cargo test --test layout -- --nocapture` prints the top-level graph.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path ("train::run") → the modules it names ("classify", "train::data", …).
type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library module file and its path (`lib.rs` is the root, ""). The binary's folder
/// (`src/bin`) is not part of the library.
fn modules(dir: &Path, prefix: &str, out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let join = |n: &str| {
            if prefix.is_empty() {
                n.to_string()
            } else {
                format!("{prefix}::{n}")
            }
        };
        if p.is_dir() {
            if prefix.is_empty() && name == "bin" {
                continue;
            }
            modules(&p, &join(&name), out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let module = match name.as_str() {
                "lib" if prefix.is_empty() => String::new(),
                "main" if prefix.is_empty() => continue,
                "mod" => prefix.to_string(),
                _ => join(&name),
            };
            out.insert(module, p);
        }
    }
}

/// The source without comments and string literals, so a path in a doc line is not an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Expands `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (head, rest) = tree.split_at(open);
    let inner = &rest[1..rest.rfind('}').unwrap_or(rest.len())];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&p).into_iter().map(|x| format!("{head}{x}")))
        .collect()
}

/// Every path the file names: `use` trees expanded, plus inline `crate::…`/`super::…` paths.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let s = stmt.trim_start();
        let s = s.strip_prefix("pub(crate) ").unwrap_or(s);
        let s = s.strip_prefix("pub ").unwrap_or(s);
        if let Some(tree) = s.strip_prefix("use ") {
            out.extend(expand(tree));
        }
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            let before = at.checked_sub(1).map(|j| bytes[j] as char);
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                out.push(code[at..end].trim_end_matches(':').to_string());
            }
            from = end.max(at + start.len());
        }
    }
    out
}

/// The module a path names: the longest known module prefix after resolving `crate`/`super`.
fn resolve(from: &str, path: &str, known: &BTreeMap<String, PathBuf>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").collect()
    };
    match segs.first() {
        Some(&"crate") => {
            base.clear();
            segs.remove(0);
        }
        Some(&"super") => {
            while segs.first() == Some(&"super") {
                segs.remove(0);
                base.pop();
            }
        }
        Some(&"self") => {
            segs.remove(0);
        }
        _ => return None,
    }
    base.extend(segs);
    (0..=base.len())
        .rev()
        .map(|n| base[..n].join("::"))
        .find(|m| known.contains_key(m))
}

fn graph() -> (Graph, BTreeMap<String, PathBuf>) {
    let mut known = BTreeMap::new();
    modules(&src(), "", &mut known);
    let mut g = Graph::new();
    for (module, file) in &known {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let deps = g.entry(module.clone()).or_default();
        for p in paths(&code) {
            if let Some(to) = resolve(module, &p, &known) {
                if &to != module {
                    deps.insert(to);
                }
            }
        }
    }
    (g, known)
}

/// For each folder, the graph among its children: an edge A → B when anything inside A
/// names anything inside B (A and B siblings). A child naming its parent is not an edge.
fn sibling_graphs(g: &Graph) -> BTreeMap<String, Graph> {
    let parent = |m: &str| m.rsplit_once("::").map_or("", |(p, _)| p).to_string();
    let child_of = |m: &str, folder: &str| -> Option<String> {
        let rest = if folder.is_empty() {
            m
        } else {
            m.strip_prefix(folder)?.strip_prefix("::")?
        };
        let first = rest.split("::").next()?;
        (!first.is_empty()).then(|| {
            if folder.is_empty() {
                first.to_string()
            } else {
                format!("{folder}::{first}")
            }
        })
    };
    let folders: BTreeSet<String> = g.keys().map(|m| parent(m)).collect();
    let mut out = BTreeMap::new();
    for folder in folders {
        let mut sg = Graph::new();
        for (from, tos) in g {
            let Some(a) = child_of(from, &folder) else {
                continue;
            };
            for to in tos {
                if let Some(b) = child_of(to, &folder) {
                    if a != b {
                        sg.entry(a.clone()).or_default().insert(b);
                    }
                }
            }
        }
        out.insert(folder, sg);
    }
    out
}

/// One cycle in `g`, if any (depth-first search).
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|x| x == m).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n.as_str()) {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_cycle_between_sibling_modules() {
    let (g, _) = graph();
    let sg = sibling_graphs(&g);
    for (folder, tops) in &sg {
        if folder.is_empty() {
            for (m, deps) in tops {
                println!(
                    "{m} -> {}",
                    deps.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
    let cycles: Vec<String> = sg
        .iter()
        .filter_map(|(folder, g)| {
            find_cycle(g).map(|c| format!("in {folder:?}: {}", c.join(" -> ")))
        })
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn the_checker_sees_a_cycle_when_there_is_one() {
    // The checker itself must be able to fail: a two-module cycle and a grouped import.
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert!(find_cycle(&g).is_some());
    assert_eq!(
        expand("crate::{a::X, b::{c, d::E}}"),
        ["crate::a::X", "crate::b::c", "crate::b::d::E"]
    );
    let known: BTreeMap<String, PathBuf> = ["", "train", "train::run", "classify"]
        .iter()
        .map(|m| (m.to_string(), PathBuf::new()))
        .collect();
    assert_eq!(
        resolve("train::run", "super::TrainConfig", &known).as_deref(),
        Some("train")
    );
    assert_eq!(
        resolve("train::run", "crate::classify::X", &known).as_deref(),
        Some("classify")
    );
}

#[test]
fn no_transport_imports_another() {
    let (g, _) = graph();
    let transports = ["grpc", "http"];
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut bad = Vec::new();
    for (from, tos) in &g {
        for to in tos {
            let (a, b) = (top(from), top(to));
            if a != b && transports.contains(&a.as_str()) && transports.contains(&b.as_str()) {
                bad.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(bad.is_empty(), "a transport imports another: {bad:?}");
}

#[test]
fn the_library_exposes_no_module_of_the_binary_or_the_tests() {
    let (_, known) = graph();
    // The command line, its printing and the benchmarks live in src/bin/switchboard; the mock
    // upstream is its own crate (mock/), a dev-dependency.
    for m in ["cli", "admin_cli", "display", "bench", "mock", "main"] {
        assert!(!known.contains_key(m), "src/{m} is part of the library");
    }
    let bin = src().join("bin/switchboard/main.rs");
    assert!(bin.is_file(), "{} is missing", bin.display());
}
