//! The source files a Rust file's code can reach through module paths, found by reading the
//! sources (no compiler): what the stage version guard hashes.
//!
//! From each file it reads, outside comments, string literals and test-only items
//! (`#[cfg(test)]`, `#[cfg(all(test, …))]`): every `use` tree and every path in the code whose
//! first segment is `crate`, `super`, `self` or one of the file's own child modules, and the
//! files named by `include_str!`/`include_bytes!`. A path resolves to the deepest module file it
//! names (`crate::a::b::Item` → `src/a/b.rs` or `src/a/b/mod.rs`, else `src/a.rs`, …); that file
//! is read in turn. A module's `mod x;` declarations alone do not pull its children in: only
//! the paths that use them do.

use std::collections::BTreeSet;
use std::path::Path;

/// A token of Rust source: enough of the lexical grammar to find paths.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
    Str(String),
}

/// Tokens of `text` without comments, lifetimes, numbers or character literals.
fn lex(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' || (ch == 'r' && matches!(c.get(i + 1), Some('"') | Some('#'))) {
            // A string, raw (r"…", r#"…"#) or not; a byte string's `b` is lexed as an ident.
            let raw = ch == 'r';
            let mut hashes = 0;
            if raw {
                i += 1;
                while c.get(i) == Some(&'#') {
                    hashes += 1;
                    i += 1;
                }
                if c.get(i) != Some(&'"') {
                    // `r#ident`: a raw identifier.
                    let start = i;
                    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                        i += 1;
                    }
                    out.push(Tok::Ident(c[start..i].iter().collect()));
                    continue;
                }
            }
            i += 1;
            let mut s = String::new();
            while i < c.len() {
                if !raw && c[i] == '\\' {
                    s.push(c[i]);
                    if let Some(&n) = c.get(i + 1) {
                        s.push(n);
                    }
                    i += 2;
                    continue;
                }
                if c[i] == '"' && (0..hashes).all(|k| c.get(i + 1 + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                s.push(c[i]);
                i += 1;
            }
            out.push(Tok::Str(s));
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
                while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                    i += 1;
                }
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '.') {
                if c[i] == '.' && c.get(i + 1) == Some(&'.') {
                    break;
                }
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok::Sep);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

fn is_ident(t: Option<&Tok>, name: &str) -> bool {
    matches!(t, Some(Tok::Ident(s)) if s == name)
}

/// `toks` without test-only items: an outer `#[cfg(…)]` naming `test` (and not `not`) drops
/// the item after it, up to its `;` or its closing brace.
fn without_test_items(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        let attr = toks[i] == Tok::Punct('#')
            && toks.get(i + 1) == Some(&Tok::Punct('['))
            && is_ident(toks.get(i + 2), "cfg");
        if !attr {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        // The attribute's tokens, to its closing bracket.
        let mut j = i + 1;
        let mut depth = 0i32;
        let (mut test, mut not) = (false, false);
        while j < toks.len() {
            match &toks[j] {
                Tok::Punct('[') | Tok::Punct('(') => depth += 1,
                Tok::Punct(']') | Tok::Punct(')') => depth -= 1,
                Tok::Ident(s) if s == "test" => test = true,
                Tok::Ident(s) if s == "not" => not = true,
                _ => {}
            }
            j += 1;
            if depth == 0 {
                break;
            }
        }
        if !test || not {
            out.extend_from_slice(&toks[i..j]);
            i = j;
            continue;
        }
        // Skip the item: to a `;` outside brackets, or through its first top-level `{…}`.
        let mut depth = 0i32;
        while j < toks.len() {
            match &toks[j] {
                Tok::Punct('(') | Tok::Punct('[') => depth += 1,
                Tok::Punct(')') | Tok::Punct(']') => depth -= 1,
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        j += 1;
                        break;
                    }
                }
                Tok::Punct(';') if depth == 0 => {
                    j += 1;
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        i = j;
    }
    out
}

/// The paths of a `use` tree starting at `toks[*i]`, each with `prefix` before it; stops after
/// the tree (at a `,`, `}` or `;` left for the caller).
fn use_tree(toks: &[Tok], i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let mut path = prefix.to_vec();
    while *i < toks.len() {
        match &toks[*i] {
            Tok::Ident(s) if s == "as" => {
                *i += 2;
                break;
            }
            Tok::Ident(s) => {
                path.push(s.clone());
                *i += 1;
            }
            Tok::Sep => *i += 1,
            Tok::Punct('{') => {
                *i += 1;
                while *i < toks.len() && toks[*i] != Tok::Punct('}') {
                    use_tree(toks, i, &path, out);
                    if toks.get(*i) == Some(&Tok::Punct(',')) {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            Tok::Punct('*') => {
                *i += 1;
                break;
            }
            _ => break,
        }
    }
    // `a::{self, b}`: `self` names `a`.
    if path.last().is_some_and(|s| s == "self") {
        path.pop();
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The module paths in `toks`: `use` trees and `a::b…` paths in the code.
fn paths(toks: &[Tok]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        if is_ident(toks.get(i), "use") {
            i += 1;
            use_tree(toks, &mut i, &[], &mut out);
            continue;
        }
        if let Tok::Ident(first) = &toks[i]
            && toks.get(i.wrapping_sub(1)) != Some(&Tok::Sep)
            && toks.get(i + 1) == Some(&Tok::Sep)
        {
            let mut path = vec![first.clone()];
            let mut j = i + 1;
            while toks.get(j) == Some(&Tok::Sep) {
                match toks.get(j + 1) {
                    Some(Tok::Ident(s)) => {
                        path.push(s.clone());
                        j += 2;
                    }
                    _ => break,
                }
            }
            out.push(path);
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The files named by `include_str!("…")` / `include_bytes!("…")`.
fn includes(toks: &[Tok]) -> Vec<String> {
    toks.windows(4)
        .filter_map(|w| match w {
            [Tok::Ident(m), Tok::Punct('!'), Tok::Punct('('), Tok::Str(p)]
                if m == "include_str" || m == "include_bytes" =>
            {
                Some(p.clone())
            }
            _ => None,
        })
        .collect()
}

/// The module path of a file under `src/` (`src/lib.rs` → [], `src/a/mod.rs` → [a]).
fn module_of(file: &str) -> Vec<String> {
    let rel = file
        .strip_prefix("src/")
        .unwrap_or(file)
        .trim_end_matches(".rs");
    let mut segs: Vec<String> = rel.split('/').map(str::to_string).collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

/// The file of module `segs`, if there is one.
fn file_of(root: &Path, segs: &[String]) -> Option<String> {
    if segs.is_empty() {
        return Some("src/lib.rs".to_string());
    }
    let base = format!("src/{}", segs.join("/"));
    [format!("{base}.rs"), format!("{base}/mod.rs")]
        .into_iter()
        .find(|f| root.join(f).is_file())
}

/// The deepest module file along `segs`.
fn resolve(root: &Path, segs: &[String]) -> Option<String> {
    (0..=segs.len())
        .rev()
        .find_map(|n| file_of(root, &segs[..n]))
}

/// `path` as a path from the crate root, seen from module `here`; `None` for paths that do not
/// start in this crate (another crate, a local name).
fn absolute(root: &Path, here: &[String], path: &[String]) -> Option<Vec<String>> {
    let first = path.first()?;
    match first.as_str() {
        "crate" | "$crate" => Some(path[1..].to_vec()),
        "self" => Some(here.iter().chain(&path[1..]).cloned().collect()),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let base = here.get(..here.len().checked_sub(ups)?)?;
            Some(base.iter().chain(&path[ups..]).cloned().collect())
        }
        _ => {
            let child: Vec<String> = here.iter().chain([first]).cloned().collect();
            file_of(root, &child).map(|_| here.iter().chain(path).cloned().collect())
        }
    }
}

/// Every file reachable from `start` (paths relative to `root`), `start` included; files under
/// a prefix in `skip` are neither listed nor read.
pub fn reachable(
    root: &Path,
    start: &[String],
    skip: &[&str],
) -> std::io::Result<BTreeSet<String>> {
    let skipped = |f: &str| skip.iter().any(|s| f.starts_with(s));
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = start.to_vec();
    while let Some(file) = todo.pop() {
        if skipped(&file) || !seen.insert(file.clone()) || !file.ends_with(".rs") {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&file))?;
        let toks = without_test_items(lex(&text));
        let here = module_of(&file);
        for p in paths(&toks) {
            if let Some(target) = absolute(root, &here, &p).and_then(|a| resolve(root, &a)) {
                todo.push(target);
            }
        }
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for inc in includes(&toks) {
            let joined = dir.join(&inc);
            let mut parts: Vec<&str> = Vec::new();
            for c in joined.to_str().unwrap_or_default().split('/') {
                match c {
                    ".." => {
                        parts.pop();
                    }
                    "." | "" => {}
                    c => parts.push(c),
                }
            }
            let f = parts.join("/");
            if !skipped(&f) && root.join(&f).is_file() {
                seen.insert(f);
            }
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn use_trees_and_code_paths_are_read_outside_comments_strings_and_tests() {
        let src = r#"
            use crate::a::{b::C, d::{self, E as F}, g::*};
            use super::h;
            // crate::in_comment::X
            /* crate::in_block::Y */
            fn f() { let s = "crate::in_string::Z"; crate::code::path(); child::g(); 'x'; }
            #[cfg(test)]
            mod tests { use crate::only_tests::T; }
            #[cfg(all(test, feature = "x"))]
            fn helper() -> [u8; 2] { crate::test_helper::h() }
            #[cfg(not(test))]
            fn kept() { crate::kept::k() }
        "#;
        let toks = without_test_items(lex(src));
        let got: Vec<String> = paths(&toks).iter().map(|p| p.join("::")).collect();
        assert_eq!(
            got,
            strings(&[
                "crate::a::b::C",
                "crate::a::d",
                "crate::a::d::E",
                "crate::a::g",
                "super::h",
                "crate::code::path",
                "child::g",
                "crate::kept::k",
            ])
        );
    }

    #[test]
    fn paths_resolve_to_the_deepest_module_file() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let root = d.path();
        for f in [
            "src/lib.rs",
            "src/a/mod.rs",
            "src/a/b.rs",
            "src/a/b/c.rs",
            "src/s/x.rs",
            "src/s/y.rs",
            "src/s/mod.rs",
            "src/unused.rs",
            "schemas/t.json",
        ] {
            std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
            std::fs::write(root.join(f), "").unwrap();
        }
        std::fs::write(
            root.join("src/s/x.rs"),
            "use super::y::Y;\nfn f() { crate::a::b::Item::new(); }\n",
        )
        .unwrap();
        std::fs::write(
            root.join("src/a/b.rs"),
            "mod c;\npub use c::*;\nconst S: &str = include_str!(\"../../schemas/t.json\");\n",
        )
        .unwrap();
        let got = reachable(root, &strings(&["src/s/x.rs"]), &[]).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            strings(&[
                "schemas/t.json",
                "src/a/b.rs",
                "src/a/b/c.rs",
                "src/s/x.rs",
                "src/s/y.rs"
            ])
        );
        let got = reachable(root, &strings(&["src/s/x.rs"]), &["src/a/"]).unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            strings(&["src/s/x.rs", "src/s/y.rs"])
        );
    }

    /// Every `.rs` file under `src/<module>` (or `src/<module>.rs`).
    fn module_files(root: &Path, module: &str) -> Vec<String> {
        let single = format!("src/{module}.rs");
        if root.join(&single).is_file() {
            return vec![single];
        }
        let mut out = Vec::new();
        let mut dirs = vec![root.join("src").join(module)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|x| x == "rs") {
                    let rel = path.strip_prefix(root).unwrap();
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        out
    }

    /// The model knows nothing of the answer's format: no code of `model` (tests aside) names
    /// a tag of `text::tokenizer`; the codec that does lives in `data`.
    #[test]
    fn the_model_names_no_answer_tag() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let tags = ["P_OPEN", "P_CLOSE", "R_OPEN", "R_CLOSE"];
        let mut named = Vec::new();
        for f in module_files(root, "model") {
            let text = std::fs::read_to_string(root.join(&f)).unwrap();
            for t in without_test_items(lex(&text)) {
                if let Tok::Ident(name) = t
                    && tags.contains(&name.as_str())
                {
                    named.push(format!("{f} names {name}"));
                }
            }
        }
        assert!(named.is_empty(), "{}", named.join("\n"));
    }

    /// The checkpoint families share what they share through `model::hf`: no code of one
    /// family (tests aside) names the other in a path, and `hf` names neither.
    #[test]
    fn the_checkpoint_families_share_only_hf() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = [
            ("model/qwen3_vl", vec!["internvl"]),
            ("model/internvl", vec!["qwen3_vl"]),
            ("model/hf", vec!["qwen3_vl", "internvl"]),
        ];
        let mut broken = Vec::new();
        for (module, forbidden) in &rules {
            let files = module_files(root, module);
            assert!(!files.is_empty(), "no files under src/{module}");
            for f in files {
                let text = std::fs::read_to_string(root.join(&f)).unwrap();
                for path in paths(&without_test_items(lex(&text))) {
                    if path.iter().any(|seg| forbidden.contains(&seg.as_str())) {
                        broken.push(format!("{f} names {}", path.join("::")));
                    }
                }
            }
        }
        assert!(broken.is_empty(), "{}", broken.join("\n"));
    }

    /// The layers of ARCHITECTURE.md hold: no module's code (tests aside) reaches, directly or
    /// through others, a module it must not know of.
    #[test]
    fn the_layers_of_the_architecture_hold() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let ml = [
            "model", "data", "analysis", "eval", "train", "clip", "rl", "report",
        ];
        let above_storage: Vec<&str> = ["dag", "tasks", "render", "text", "stages"]
            .into_iter()
            .chain(ml)
            .collect();
        let rules: Vec<(&str, Vec<&str>)> = vec![
            ("store", above_storage.clone()),
            ("table", above_storage.clone()),
            ("util", above_storage.clone()),
            ("dag", above_storage[1..].to_vec()),
            ("tasks", [&ml[..], &["stages"]].concat()),
            ("render", [&ml[..], &["stages"]].concat()),
            ("text", [&ml[..], &["stages"]].concat()),
            (
                "data",
                [&ml[..], &["stages"]]
                    .concat()
                    .into_iter()
                    .filter(|m| *m != "data")
                    .collect(),
            ),
            (
                "model",
                vec![
                    "analysis", "eval", "train", "clip", "rl", "report", "stages",
                ],
            ),
            (
                "analysis",
                vec!["eval", "train", "clip", "rl", "report", "stages"],
            ),
            ("eval", vec!["train", "clip", "rl", "report", "stages"]),
            ("train", vec!["clip", "rl", "report", "stages"]),
            ("clip", vec!["rl", "report", "stages"]),
            ("rl", vec!["report", "stages"]),
            ("report", vec!["stages"]),
        ];
        let mut broken = Vec::new();
        for (module, forbidden) in &rules {
            let reached = reachable(root, &module_files(root, module), &[]).unwrap();
            for f in &reached {
                let m = f
                    .strip_prefix("src/")
                    .and_then(|r| r.split(['/', '.']).next())
                    .unwrap_or_default();
                if forbidden.contains(&m) {
                    broken.push(format!("{module} reaches {f}"));
                }
            }
        }
        assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
    }
}
