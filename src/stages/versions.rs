//! The stage version guard.
//!
//! A stage's cache key carries its hand-bumped `VERSION`; a code change that forgets the bump
//! silently serves stale artifacts. `src/stages/versions.json` records, for every stage, its
//! `VERSION` and a blake3 hash of the source files that determine its output
//! ([`stage_sources`]). A test fails when a stage's hashed sources change while its `VERSION`
//! does not, and when the table is behind the code.
//!
//! What is hashed: the stage's own file (`src/stages/<name>.rs`) and every file its code reaches
//! through module paths, transitively ([`super::reach`]: `use` trees, `crate::`/`super::` paths,
//! child modules, `include_str!` files), so no list is kept by hand. Infrastructure that only
//! moves bytes ([`NOT_FOLLOWED`]: the DAG, the store, table I/O, the stage adapter) is neither
//! hashed nor followed. Each Rust file is normalized before hashing: line endings become `\n`,
//! blank lines, full-line `//` comments and trailing whitespace are dropped, and test modules
//! (`#[cfg(test)] mod tests`, inline or in their own file) are cut; code after a test module
//! is hashed like the rest.
//!
//! Refresh with `make stage-versions` (`asymm dev stage-versions --write`, run from the
//! repository root). It refuses while a stage's sources changed without a bump, unless
//! `--unchanged-output STAGE` says the output provably did not change (a refactor, a rename).

use crate::dag::Registry;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The table's path, relative to the repository root.
pub const TABLE_PATH: &str = "src/stages/versions.json";

/// The command that refreshes the table.
pub const REFRESH: &str = "make stage-versions";

/// Infrastructure that only moves bytes (the DAG, the store, table I/O, the stage adapter and
/// this guard, the CLI): neither hashed nor followed. A change there that alters a stage's
/// output needs a manual bump of the stages concerned.
pub const NOT_FOLLOWED: &[&str] = &[
    "src/cli/",
    "src/dag/",
    "src/store/",
    "src/table/",
    "src/progress.rs",
    "src/stages/mod.rs",
    "src/stages/reach.rs",
    "src/stages/versions.rs",
    "src/util/fsx.rs",
];

/// A stage's own file: `src/stages/<name with _ for ->.rs`.
pub fn stage_file(stage: &str) -> String {
    format!("src/stages/{}.rs", stage.replace('-', "_"))
}

/// The files (relative to `root`) whose code determines `stage`'s output: its file and all the
/// code it reaches ([`super::reach`]), less [`NOT_FOLLOWED`].
pub fn stage_sources(root: &Path, stage: &str) -> Result<Vec<String>> {
    let file = stage_file(stage);
    if !root.join(&file).is_file() {
        return Err(VersionsError::NoSources(stage.to_string()));
    }
    let files = super::reach::reachable(root, &[file], NOT_FOLLOWED).map_err(io(root))?;
    Ok(files.into_iter().collect())
}

/// Errors of the version guard.
#[derive(Debug, thiserror::Error)]
pub enum VersionsError {
    #[error("i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg} (take either side of a merge conflict, then run `{REFRESH}`)")]
    BadTable { path: PathBuf, msg: String },
    #[error("stage `{0}` has no source file (expected src/stages/<name with _ for ->.rs)")]
    NoSources(String),
    #[error("`{0}` is not a registered stage")]
    UnknownStage(String),
    #[error("refusing to refresh {TABLE_PATH}:\n{0}")]
    Refused(String),
}

pub type Result<T> = std::result::Result<T, VersionsError>;

/// One stage's row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u32,
    /// blake3 over the files' paths and hashes below.
    pub blake3: String,
    /// Each hashed file's blake3 after normalization.
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct TableFile {
    #[serde(rename = "_about", default)]
    about: String,
    stages: BTreeMap<String, Entry>,
}

const ABOUT: &str = "Stage VERSION and blake3 of the normalized sources that determine its output \
(see src/stages/versions.rs). Generated: refresh with `make stage-versions` after bumping the \
VERSION of every stage whose sources changed.";

/// A difference between the table and the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Sources changed but the version did not.
    NotBumped {
        stage: String,
        version: u32,
        files: Vec<String>,
    },
    /// The version went down.
    VersionDecreased {
        stage: String,
        recorded: u32,
        current: u32,
    },
    /// The table is behind the code (a bump, a new or removed stage): refresh it.
    Outdated { stage: String, what: String },
}

impl Finding {
    /// Whether a refresh may record this finding.
    pub fn refreshable(&self) -> bool {
        matches!(self, Finding::Outdated { .. })
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::NotBumped {
                stage,
                version,
                files,
            } => write!(
                f,
                "stage `{stage}`: its sources changed ({}) but its VERSION is still {version}. \
                 Bump `const VERSION` to {} in its src/stages file, then run `{REFRESH}`. If its \
                 output provably did not change, run `cargo run --release -- dev stage-versions \
                 --write --unchanged-output {stage}` instead.",
                files.join(", "),
                version + 1
            ),
            Finding::VersionDecreased {
                stage,
                recorded,
                current,
            } => write!(
                f,
                "stage `{stage}`: VERSION went down from {recorded} to {current}; versions only go \
                 up (old cache keys would be reused). Set it to {} or more.",
                recorded + 1
            ),
            Finding::Outdated { stage, what } => {
                write!(
                    f,
                    "stage `{stage}`: {what}; {TABLE_PATH} is out of date: run `{REFRESH}`"
                )
            }
        }
    }
}

/// The text hashed for a source file (see the module docs).
pub fn normalize(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    // Inside a test module: until its closing brace at the start of a line (rustfmt's layout).
    let mut in_tests = false;
    for (k, line) in lines.iter().enumerate() {
        let t = line.trim();
        if in_tests {
            in_tests = !line.starts_with('}');
            continue;
        }
        if t.starts_with("#[cfg(")
            && t.contains("test")
            && !t.contains("not(")
            && lines
                .get(k + 1)
                .is_some_and(|n| n.starts_with("mod tests") || n.starts_with("pub mod tests"))
        {
            // `mod tests;` is one line; `mod tests {` runs to its `}`.
            in_tests = lines[k + 1].trim_end().ends_with('{');
            continue;
        }
        if k > 0
            && (line.starts_with("mod tests") || line.starts_with("pub mod tests"))
            && lines[k - 1].trim().starts_with("#[cfg(")
            && lines[k - 1].contains("test")
        {
            continue;
        }
        if t.is_empty() || t.starts_with("//") {
            continue;
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VersionsError + '_ {
    move |source| VersionsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The current entry of one stage.
/// Rust files are hashed normalized, other files (schemas, data) as they are.
pub fn entry(root: &Path, version: u32, sources: &[String]) -> Result<Entry> {
    let mut files = BTreeMap::new();
    for f in sources {
        let p = root.join(f);
        let bytes = std::fs::read(&p).map_err(io(&p))?;
        let hash = if f.ends_with(".rs") {
            blake3::hash(normalize(&String::from_utf8_lossy(&bytes)).as_bytes())
        } else {
            blake3::hash(&bytes)
        };
        files.insert(f.clone(), hash.to_hex().to_string());
    }
    let mut h = blake3::Hasher::new();
    h.update(b"asymm-stage-sources-v1\0");
    for (path, hash) in &files {
        h.update(path.as_bytes());
        h.update(b"\0");
        h.update(hash.as_bytes());
        h.update(b"\n");
    }
    Ok(Entry {
        version,
        blake3: h.finalize().to_hex().to_string(),
        files,
    })
}

/// Every stage's current entry: `versions` (stage → VERSION), `sources` giving each stage's files.
pub fn current_with(
    root: &Path,
    versions: &BTreeMap<String, u32>,
    sources: &dyn Fn(&str) -> Result<Vec<String>>,
) -> Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    for (name, &version) in versions {
        out.insert(name.clone(), entry(root, version, &sources(name)?)?);
    }
    Ok(out)
}

/// The registered stages' versions.
pub fn registered_versions(reg: &dyn Registry) -> BTreeMap<String, u32> {
    reg.names()
        .into_iter()
        .filter_map(|n| reg.get(n).map(|d| (n.to_string(), d.version())))
        .collect()
}

/// Reads the table at `path` (an absent file is an empty table).
pub fn read_table(path: &Path) -> Result<BTreeMap<String, Entry>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let t: TableFile = serde_json::from_slice(&bytes).map_err(|e| VersionsError::BadTable {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok(t.stages)
}

/// The table's text for `stages`.
pub fn table_text(stages: &BTreeMap<String, Entry>) -> String {
    let t = TableFile {
        about: ABOUT.to_string(),
        stages: stages.clone(),
    };
    let mut s = serde_json::to_string_pretty(&t).unwrap_or_default();
    s.push('\n');
    s
}

/// How the table (`recorded`) differs from the code (`current`).
pub fn compare(
    recorded: &BTreeMap<String, Entry>,
    current: &BTreeMap<String, Entry>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    for (stage, now) in current {
        let Some(old) = recorded.get(stage) else {
            out.push(Finding::Outdated {
                stage: stage.clone(),
                what: "not in the table".into(),
            });
            continue;
        };
        if now.version < old.version {
            out.push(Finding::VersionDecreased {
                stage: stage.clone(),
                recorded: old.version,
                current: now.version,
            });
        } else if now.blake3 != old.blake3 && now.version == old.version {
            let mut files: Vec<String> = now
                .files
                .iter()
                .filter(|(f, h)| old.files.get(*f) != Some(h))
                .map(|(f, _)| f.clone())
                .collect();
            files.extend(
                old.files
                    .keys()
                    .filter(|f| !now.files.contains_key(*f))
                    .map(|f| format!("{f} (no longer listed)")),
            );
            out.push(Finding::NotBumped {
                stage: stage.clone(),
                version: now.version,
                files,
            });
        } else if now != old {
            out.push(Finding::Outdated {
                stage: stage.clone(),
                what: format!("VERSION {} → {}", old.version, now.version),
            });
        }
    }
    for stage in recorded.keys().filter(|s| !current.contains_key(*s)) {
        out.push(Finding::Outdated {
            stage: stage.clone(),
            what: "no longer a registered stage".into(),
        });
    }
    out
}

/// Compares the table under `root` with the registered stages' sources.
pub fn check(root: &Path, reg: &dyn Registry) -> Result<Vec<Finding>> {
    let current = current_with(root, &registered_versions(reg), &|s| stage_sources(root, s))?;
    Ok(compare(&read_table(&root.join(TABLE_PATH))?, &current))
}

/// What a refresh did.
#[derive(Debug)]
pub struct Refreshed {
    /// The findings it recorded.
    pub recorded: Vec<Finding>,
    /// Whether the table file was rewritten.
    pub written: bool,
}

/// Rewrites the table at `root.join(table)` to match the code, refusing while a stage's sources
/// changed without a version bump (unless the stage is in `unchanged_output`) or a version went
/// down.
pub fn refresh_with(
    root: &Path,
    table: &str,
    versions: &BTreeMap<String, u32>,
    sources: &dyn Fn(&str) -> Result<Vec<String>>,
    unchanged_output: &[String],
) -> Result<Refreshed> {
    let path = root.join(table);
    let current = current_with(root, versions, sources)?;
    let findings = compare(&read_table(&path)?, &current);
    let blocking: Vec<String> = findings
        .iter()
        .filter(|f| {
            !f.refreshable()
                && !matches!(f, Finding::NotBumped { stage, .. } if unchanged_output.contains(stage))
        })
        .map(|f| format!("  {f}"))
        .collect();
    if !blocking.is_empty() {
        return Err(VersionsError::Refused(blocking.join("\n")));
    }
    let text = table_text(&current);
    let written = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
    if written {
        crate::util::fsx::write_atomic(&path, text.as_bytes()).map_err(io(&path))?;
    }
    Ok(Refreshed {
        recorded: findings,
        written,
    })
}

/// [`refresh_with`] for the registered stages and their [`stage_sources`].
pub fn refresh(root: &Path, reg: &dyn Registry, unchanged_output: &[String]) -> Result<Refreshed> {
    for s in unchanged_output {
        if reg.get(s).is_none() {
            return Err(VersionsError::UnknownStage(s.clone()));
        }
    }
    refresh_with(
        root,
        TABLE_PATH,
        &registered_versions(reg),
        &|s| stage_sources(root, s),
        unchanged_output,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files a source list names, relative to `root`, sorted: a name ending in `/` stands for
    /// every `.rs` file below that folder, subfolders included.
    fn expand(root: &Path, sources: &[&str]) -> Result<Vec<String>> {
        let mut files = Vec::new();
        for s in sources {
            if let Some(dir) = s.strip_suffix('/') {
                let mut found = Vec::new();
                rust_files(root, dir, &mut found)?;
                if found.is_empty() {
                    panic!("{s} holds no .rs file");
                }
                files.append(&mut found);
            } else {
                files.push(s.to_string());
            }
        }
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// Appends the `.rs` files below `root/dir` (as `dir/…` paths) to `out`.
    fn rust_files(root: &Path, dir: &str, out: &mut Vec<String>) -> Result<()> {
        let p = root.join(dir);
        for e in std::fs::read_dir(&p)
            .map_err(io(&p))?
            .filter_map(|e| e.ok())
        {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = e.path();
            if path.is_dir() {
                rust_files(root, &format!("{dir}/{name}"), out)?;
            } else if path.is_file() && name.ends_with(".rs") {
                out.push(format!("{dir}/{name}"));
            }
        }
        Ok(())
    }

    /// The checked-in table matches the stages' sources and versions.
    #[test]
    fn stage_versions_table_is_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let findings = check(root, &super::super::StageRegistry::default()).unwrap();
        let text: Vec<String> = findings.iter().map(|f| format!("  {f}")).collect();
        assert!(
            findings.is_empty(),
            "{TABLE_PATH} does not match the stages:\n{}",
            text.join("\n")
        );
    }

    #[test]
    fn normalization_ignores_line_endings_comments_and_tests() {
        let base = "//! doc\nfn f() -> u32 {\n    1 // one\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {}\n}\n";
        let crlf = base.replace('\n', "\r\n");
        let commented = base.replace("fn f", "/// The answer.\n  // note\nfn f");
        let retested = base.replace("fn t() {}", "fn t() { assert!(true) }");
        for v in [&crlf, &commented, &retested] {
            assert_eq!(normalize(v), normalize(base), "{v:?}");
        }
        assert_eq!(normalize(base), "fn f() -> u32 {\n    1 // one\n}\n");
        assert_ne!(normalize(&base.replace("1 //", "2 //")), normalize(base));
    }

    #[test]
    fn code_after_a_test_module_is_hashed() {
        let base = "fn f() {}\n\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}\n\nfn after() {}\n";
        assert_eq!(normalize(base), "fn f() {}\nfn after() {}\n");
        let outside = "fn f() {}\n\n#[cfg(all(test, feature = \"x\"))]\nmod tests;\nfn g() {}\n";
        assert_eq!(normalize(outside), "fn f() {}\nfn g() {}\n");
    }

    /// A change to a grader in `src/tasks/` (a scratch copy of the sources) flags every stage
    /// whose code reaches it, `grpo-update` among them, until their versions move.
    #[test]
    fn a_grader_change_flags_the_stages_that_reach_it() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let root = d.path();
        for dir in ["src", "schemas"] {
            let mut files = Vec::new();
            all_files(repo, dir, &mut files);
            for f in files {
                std::fs::create_dir_all(root.join(&f).parent().unwrap()).unwrap();
                std::fs::copy(repo.join(&f), root.join(&f)).unwrap();
            }
        }
        let mut versions = registered_versions(&super::super::StageRegistry::default());
        let sources = |s: &str| stage_sources(root, s);
        let table = "versions.json";
        refresh_with(root, table, &versions, &sources, &[]).unwrap();
        let grader = root.join("src/tasks/sudoku.rs");
        let text = std::fs::read_to_string(&grader).unwrap();
        std::fs::write(
            &grader,
            format!("{text}\npub fn changed() -> u32 {{ 1 }}\n"),
        )
        .unwrap();
        let findings = compare(
            &read_table(&root.join(table)).unwrap(),
            &current_with(root, &versions, &sources).unwrap(),
        );
        let flagged: Vec<&str> = findings
            .iter()
            .filter_map(|f| match f {
                Finding::NotBumped { stage, files, .. } => {
                    assert_eq!(files, &["src/tasks/sudoku.rs"]);
                    Some(stage.as_str())
                }
                _ => None,
            })
            .collect();
        for stage in [
            "synthesize",
            "render",
            "evaluate",
            "sft-train",
            "grpo-update",
        ] {
            assert!(flagged.contains(&stage), "{stage} not flagged: {flagged:?}");
        }
        assert!(!flagged.contains(&"digits"), "{flagged:?}");
        assert!(refresh_with(root, table, &versions, &sources, &[]).is_err());
        for stage in &flagged {
            *versions.get_mut(*stage).unwrap() += 1;
        }
        refresh_with(root, table, &versions, &sources, &[]).unwrap();
    }

    fn all_files(root: &Path, dir: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(root.join(dir)).unwrap().flatten() {
            let name = format!("{dir}/{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                all_files(root, &name, out);
            } else {
                out.push(name);
            }
        }
    }

    /// A folder in a source list covers the files of its subfolders too.
    #[test]
    fn a_folder_covers_its_subfolders() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("lib/deep/er")).unwrap();
        for f in [
            "lib/a.rs",
            "lib/deep/b.rs",
            "lib/deep/er/c.rs",
            "lib/deep/notes.md",
        ] {
            std::fs::write(root.join(f), "fn f() {}\n").unwrap();
        }
        assert_eq!(
            expand(root, &["lib/"]).unwrap(),
            ["lib/a.rs", "lib/deep/b.rs", "lib/deep/er/c.rs"]
        );
    }

    #[test]
    fn refresh_refuses_a_change_without_a_bump() {
        let d = crate::util::fsx::TempDir::new("asymm-test").unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("a.rs"), "fn a() {}\n").unwrap();
        std::fs::write(root.join("lib/x.rs"), "fn x() {}\n").unwrap();
        std::fs::write(root.join("lib/notes.txt"), "not hashed").unwrap();
        let sources = |s: &str| match s {
            "a" => expand(root, &["a.rs", "lib/"]),
            "b" => expand(root, &["lib/x.rs"]),
            _ => Err(VersionsError::NoSources(s.to_string())),
        };
        let mut versions: BTreeMap<String, u32> = [("a".into(), 1), ("b".into(), 1)].into();
        let table = "versions.json";
        let refresh =
            |v: &BTreeMap<String, u32>, ok: &[String]| refresh_with(root, table, v, &sources, ok);
        let current = |v: &BTreeMap<String, u32>| {
            compare(
                &read_table(&root.join(table)).unwrap(),
                &current_with(root, v, &sources).unwrap(),
            )
        };

        // A new table records every stage; then nothing is left to do.
        let r = refresh(&versions, &[]).unwrap();
        assert!(r.written && r.recorded.len() == 2, "{r:?}");
        assert!(current(&versions).is_empty());
        assert!(!refresh(&versions, &[]).unwrap().written);

        // Line endings and non-Rust files do not count.
        std::fs::write(root.join("a.rs"), "fn a() {}\r\n").unwrap();
        std::fs::write(root.join("lib/notes.txt"), "edited").unwrap();
        assert!(current(&versions).is_empty());

        // A change in a shared file needs both stages bumped.
        std::fs::write(root.join("lib/x.rs"), "fn x() { 1; }\n").unwrap();
        let found = current(&versions);
        assert_eq!(
            found,
            vec![
                Finding::NotBumped {
                    stage: "a".into(),
                    version: 1,
                    files: vec!["lib/x.rs".into()]
                },
                Finding::NotBumped {
                    stage: "b".into(),
                    version: 1,
                    files: vec!["lib/x.rs".into()]
                },
            ]
        );
        assert!(found[0].to_string().contains("Bump `const VERSION` to 2"));
        let e = refresh(&versions, &[]).unwrap_err().to_string();
        assert!(e.contains("stage `a`") && e.contains("stage `b`"), "{e}");
        versions.insert("a".into(), 2);
        let e = refresh(&versions, &[]).unwrap_err().to_string();
        assert!(!e.contains("stage `a`") && e.contains("stage `b`"), "{e}");
        // `b` declared unaffected: recorded without a bump.
        let r = refresh(&versions, &["b".into()]).unwrap();
        assert!(r.written);
        assert!(current(&versions).is_empty());
        let recorded = read_table(&root.join(table)).unwrap();
        assert_eq!((recorded["a"].version, recorded["b"].version), (2, 1));

        // Versions never go down; a stage without sources is an error.
        versions.insert("a".into(), 1);
        assert!(matches!(
            current(&versions)[..],
            [Finding::VersionDecreased {
                recorded: 2,
                current: 1,
                ..
            }]
        ));
        assert!(refresh(&versions, &[]).is_err());
        versions.insert("a".into(), 2);
        versions.insert("c".into(), 1);
        assert!(matches!(
            refresh(&versions, &[]),
            Err(VersionsError::NoSources(s)) if s == "c"
        ));
    }
}
