//! The layer rule of `crates/mps/src` (docs/architecture.md, "Layers"): a module imports only
//! modules of its own layer or below, no imports go round in a circle (between top-level
//! modules, nor between the submodules of one folder), and every top-level module has a layer.
//!
//! It reads the sources as text: the `use` trees and the inline `crate::`/`super::` paths
//! outside comments, strings and `#[cfg(test)]` items, each mapped to the module (a file, or a
//! folder with its `mod.rs`) that it names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first: the same table as docs/architecture.md.
const LAYERS: &[(u8, &[&str])] = &[
    (0, &["id", "topic", "words", "retry", "shutdown", "config"]),
    (
        1,
        &[
            "audience",
            "formats",
            "preferences",
            "auth",
            "limits",
            "telemetry",
        ],
    ),
    (2, &["hub"]),
    (3, &["store", "broker", "presence", "cluster"]),
    (4, &["push", "channels", "webhooks"]),
    (5, &["engine"]),
    (
        6,
        &[
            "state",
            "http",
            "api",
            "transport",
            "ingest",
            "listener",
            "origin",
            "tls",
        ],
    ),
    (7, &["server", "cli", "main"]),
];

/// A module's path below the crate root: `["push", "devices"]` is `crate::push::devices`.
type Module = Vec<String>;

/// One import: which module names which, and the path as written (for the message).
#[derive(Debug, Clone)]
struct Edge {
    from: Module,
    to: Module,
    file: String,
    path: String,
}

#[test]
fn the_crate_follows_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_sources(&src, &src, &mut files);
    assert!(files.len() > 20, "found only {} source files", files.len());
    let problems = check(&files, LAYERS);
    assert!(
        problems.is_empty(),
        "the layer rule of docs/architecture.md is broken:\n{}",
        problems.join("\n")
    );
}

fn read_sources(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_sources(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let name = path.strip_prefix(root).unwrap().to_string_lossy();
            let text = std::fs::read_to_string(&path).unwrap();
            files.push((name.replace('\\', "/"), text));
        }
    }
}

/// Every breach of the rule in `files` (paths below `src/` with their text), as messages.
fn check(files: &[(String, String)], layers: &[(u8, &[&str])]) -> Vec<String> {
    let layer_of: BTreeMap<&str, u8> = layers
        .iter()
        .flat_map(|(layer, names)| names.iter().map(move |n| (*n, *layer)))
        .collect();
    let edges = edges(files);
    let mut problems = Vec::new();
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|(file, _)| module_of(file).first().cloned())
        .collect();
    for top in tops {
        if !layer_of.contains_key(top.as_str()) {
            problems.push(format!(
                "module crate::{top} is missing from the layer table"
            ));
        }
    }
    for edge in &edges {
        let (from, to) = (edge.from[0].as_str(), edge.to[0].as_str());
        if let (Some(a), Some(b)) = (layer_of.get(from), layer_of.get(to))
            && a < b
        {
            problems.push(format!(
                "upward import: crate::{from} (layer {a}) imports crate::{to} (layer {b}): \
                 {} names {}",
                edge.file, edge.path
            ));
        }
    }
    problems.extend(circles(&edges));
    problems
}

/// The module a file is: `push/devices.rs` is `push::devices`, `push/mod.rs` is `push`,
/// `lib.rs` the root.
fn module_of(file: &str) -> Module {
    let stem = file.strip_suffix(".rs").unwrap_or(file);
    let mut parts: Module = stem.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod") || stem == "lib" {
        parts.pop();
    }
    parts
}

/// The imports between modules in `files`, each to the longest module its path names, leaving
/// out a module's imports of itself, its ancestors and its descendants.
fn edges(files: &[(String, String)]) -> Vec<Edge> {
    let mut test_only = BTreeSet::new();
    let mut code = Vec::new();
    for (file, text) in files {
        let module = module_of(file);
        let (kept, test_mods) = without_tests(&strip(text));
        for name in test_mods {
            let mut child = module.clone();
            child.push(name);
            test_only.insert(child);
        }
        code.push((file.clone(), module, kept));
    }
    let modules: BTreeSet<Module> = code
        .iter()
        .map(|(_, m, _)| m.clone())
        .filter(|m| !test_only.contains(m))
        .collect();
    let mut edges = Vec::new();
    for (file, module, text) in &code {
        if module.is_empty() || test_only.contains(module) {
            continue;
        }
        // The binary names the library by its crate name.
        let root = if file == "main.rs" { "mps" } else { "crate" };
        for path in paths(text, root) {
            let Some(target) = resolve(module, &path, root, &modules) else {
                continue;
            };
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                edges.push(Edge {
                    from: module.clone(),
                    to: target,
                    file: format!("src/{file}"),
                    path: path
                        .iter()
                        .filter(|p| *p != "self")
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("::"),
                });
            }
        }
    }
    edges
}

/// The module `path` (as written in `module`) names: the longest known module it starts with.
fn resolve(
    module: &Module,
    path: &[String],
    root: &str,
    modules: &BTreeSet<Module>,
) -> Option<Module> {
    let mut base: Module;
    let mut rest = path;
    if rest.first().is_some_and(|p| p == root) {
        base = Vec::new();
        rest = &rest[1..];
    } else if rest.first().is_some_and(|p| p == "super") {
        base = module.clone();
        while rest.first().is_some_and(|p| p == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
    } else {
        return None;
    }
    base.extend(rest.iter().filter(|p| *p != "self").cloned());
    (1..=base.len())
        .rev()
        .map(|n| base[..n].to_vec())
        .find(|candidate| modules.contains(candidate))
}

/// Circles among top-level modules, and among the submodules of each folder.
fn circles(edges: &[Edge]) -> Vec<String> {
    // For each folder (the root is the empty one), the imports between its children.
    let mut graphs: BTreeMap<Module, BTreeMap<String, BTreeMap<String, &Edge>>> = BTreeMap::new();
    for edge in edges {
        let common = edge
            .from
            .iter()
            .zip(&edge.to)
            .take_while(|(a, b)| a == b)
            .count();
        let (Some(a), Some(b)) = (edge.from.get(common), edge.to.get(common)) else {
            continue;
        };
        graphs
            .entry(edge.from[..common].to_vec())
            .or_default()
            .entry(a.clone())
            .or_default()
            .entry(b.clone())
            .or_insert(edge);
    }
    let mut problems = Vec::new();
    for (folder, graph) in &graphs {
        for circle in find_circles(graph) {
            let prefix: String = folder.iter().map(|f| format!("{f}::")).collect();
            let mut steps = Vec::new();
            for pair in circle.windows(2) {
                let edge = graph[&pair[0]][&pair[1]];
                steps.push(format!(
                    "  crate::{prefix}{} -> crate::{prefix}{} ({} names {})",
                    pair[0], pair[1], edge.file, edge.path
                ));
            }
            problems.push(format!("import circle:\n{}", steps.join("\n")));
        }
    }
    problems
}

/// One circle (first node repeated last) through each strongly connected group of `graph`.
fn find_circles(graph: &BTreeMap<String, BTreeMap<String, &Edge>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = graph
        .iter()
        .flat_map(|(a, targets)| std::iter::once(a).chain(targets.keys()))
        .collect();
    let reaches = |from: &String, to: &String| -> Option<Vec<String>> {
        // Breadth-first, so the circle reported is a shortest one.
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from]);
        while let Some(node) = queue.pop_front() {
            for next in graph.get(node).into_iter().flat_map(|t| t.keys()) {
                if next == to {
                    let mut path = vec![next.clone(), node.clone()];
                    let mut at = node;
                    while at != from {
                        at = previous[at];
                        path.push(at.clone());
                    }
                    path.reverse();
                    return Some(path);
                }
                if next != from && !previous.contains_key(next) {
                    previous.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        None
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut found = Vec::new();
    for node in nodes {
        if seen.contains(node) {
            continue;
        }
        if let Some(circle) = reaches(node, node) {
            // Every module that both reaches and is reached from this one is in the same
            // group; report the group once.
            for other in graph.keys() {
                if reaches(node, other).is_some() && reaches(other, node).is_some() {
                    seen.insert(other.clone());
                }
            }
            found.push(circle);
        }
    }
    found
}

/// `text` with comments and the contents of string and character literals blanked out.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// `code` without its `#[cfg(test)]` items, and the names of the modules declared test-only
/// in files of their own (`#[cfg(test)] mod suite;`).
fn without_tests(code: &str) -> (String, Vec<String>) {
    const MARK: &str = "#[cfg(test)]";
    let mut kept = String::new();
    let mut test_mods = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        kept.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        // The item ends at its first `;` or at the brace closing its first `{`.
        let mut depth = 0;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let words: Vec<&str> = item[..end]
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        if let [.., "mod", name] = words.as_slice() {
            test_mods.push((*name).to_owned());
        }
        rest = &item[end..];
    }
    kept.push_str(rest);
    (kept, test_mods)
}

/// Every path in `code` that starts with `root` (`crate`, or the crate's name in the binary)
/// or `super`: inline ones, and each leaf of a `use` tree.
fn paths(code: &str, root: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if ident_before(&chars, i) || !(chars[i].is_alphabetic() || chars[i] == '_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        if word == "use" {
            let end = chars[i..]
                .iter()
                .position(|c| *c == ';')
                .map_or(chars.len(), |p| i + p);
            let tree: String = chars[i..end].iter().collect();
            expand(&tree, &mut Vec::new(), &mut found);
            i = end;
        } else if word == root || word == "super" {
            // An inline path: as many `::ident` as follow.
            let mut path = vec![word];
            loop {
                let rest: String = chars[i..].iter().take(2).collect();
                if rest != "::" {
                    break;
                }
                let seg_start = i + 2;
                let mut j = seg_start;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                if j == seg_start {
                    break;
                }
                path.push(chars[seg_start..j].iter().collect());
                i = j;
            }
            if path.len() > 1 {
                found.push(path);
            }
        }
    }
    found
        .into_iter()
        .filter(|p| p.first().is_some_and(|f| f == root || f == "super"))
        .collect()
}

/// The leaves of a `use` tree, each as a path after `prefix`.
fn expand(tree: &str, prefix: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut depth = 0;
        let mut part = String::new();
        for c in inner.chars().chain([',']) {
            match c {
                ',' if depth == 0 => {
                    if !part.is_empty() {
                        expand(&part, prefix, found);
                    }
                    part.clear();
                    continue;
                }
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            part.push(c);
        }
        return;
    }
    match tree.split_once("::") {
        Some((head, tail)) => {
            prefix.push(head.trim().to_owned());
            expand(tail, prefix, found);
            prefix.pop();
        }
        None => {
            let mut path = prefix.clone();
            // `Name as Alias` names `Name`.
            let leaf = tree.split_whitespace().next().unwrap_or_default();
            if !leaf.is_empty() && leaf != "*" {
                path.push(leaf.to_owned());
            }
            found.push(path);
        }
    }
}

// The rule's own checks, on small crates written out here, so that the test above cannot pass
// by finding nothing.

fn crate_of(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

const SMALL: &[(u8, &[&str])] = &[(0, &["words"]), (1, &["store", "push"]), (2, &["engine"])];

#[test]
fn an_upward_import_is_found() {
    let files = crate_of(&[
        ("words.rs", "use crate::store::Store;\n"),
        ("store.rs", "pub struct Store;\n"),
    ]);
    let problems = check(&files, SMALL);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("crate::words (layer 0) imports crate::store (layer 1)"),
        "{problems:?}"
    );
}

#[test]
fn an_inline_path_counts_as_an_import() {
    let files = crate_of(&[
        ("words.rs", "fn f() { crate::engine::run(); }\n"),
        ("engine.rs", "pub fn run() {}\n"),
    ]);
    let problems = check(&files, SMALL);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("crate::engine::run"), "{problems:?}");
}

#[test]
fn a_circle_is_found() {
    let files = crate_of(&[
        (
            "store/mod.rs",
            "mod sql;\nuse crate::push::{Way, fallback::Job};\n",
        ),
        ("store/sql.rs", "use super::super::words::Name;\n"),
        ("push/mod.rs", "pub mod fallback;\n"),
        ("push/fallback.rs", "use crate::store::Store;\n"),
        ("words.rs", ""),
    ]);
    let problems = check(&files, SMALL);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("import circle"), "{problems:?}");
    assert!(
        problems[0].contains("crate::push -> crate::store"),
        "{problems:?}"
    );
    assert!(
        problems[0].contains("crate::store -> crate::push"),
        "{problems:?}"
    );
}

#[test]
fn a_circle_between_siblings_in_a_folder_is_found() {
    let files = crate_of(&[
        ("push/mod.rs", "mod apns;\nmod vendors;\n"),
        ("push/apns.rs", "use super::vendors::Retry;\n"),
        (
            "push/vendors.rs",
            "fn build() { super::apns::Apns::new(); }\n",
        ),
    ]);
    let problems = check(&files, SMALL);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("crate::push::apns -> crate::push::vendors"),
        "{problems:?}"
    );
}

#[test]
fn a_module_without_a_layer_is_found() {
    let files = crate_of(&[("utils.rs", "")]);
    assert_eq!(
        check(&files, SMALL),
        ["module crate::utils is missing from the layer table"]
    );
}

#[test]
fn tests_comments_and_strings_are_not_imports() {
    let files = crate_of(&[
        (
            "words.rs",
            "//! Spoken of by [`crate::engine`].\n\
             const URL: &str = \"crate::engine::x\";\n\
             /* crate::store::Store */\n\
             fn f<'a>(c: char) -> bool { c == '\"' }\n\
             #[cfg(test)]\nmod tests {\n    use crate::engine::Engine;\n}\n\
             #[cfg(test)]\nmod suite;\n",
        ),
        ("words/suite.rs", "use crate::store::Store;\n"),
        ("engine.rs", ""),
        ("store.rs", ""),
    ]);
    assert_eq!(check(&files, SMALL), Vec::<String>::new());
}

#[test]
fn a_use_tree_names_each_leaf() {
    let mut found = Vec::new();
    expand(
        "crate::{engine::{self, Engine},\n    store::Store as S, words::*}",
        &mut Vec::new(),
        &mut found,
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        found,
        [
            "crate::engine::self",
            "crate::engine::Engine",
            "crate::store::Store",
            "crate::words"
        ]
    );
}
