//! The layering docs/architecture.md draws, checked on the sources so a change that breaks it
//! fails here: which modules may import which, and who may read the clock. Only code outside
//! `#[cfg(test)]` counts (tests may take any instant as their origin).

use std::path::{Path, PathBuf};

/// What the files under a directory must not mention, and why.
struct Rule {
    under: &'static str,
    forbidden: &'static [&'static str],
    why: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        under: "src/sfu",
        forbidden: &[
            "axum",
            "sqlx",
            "redis",
            "crate::signal",
            "crate::api",
            "crate::pipeline",
            "crate::db",
            "crate::config",
            "crate::wall",
        ],
        why: "the router is sans-IO and below signaling, the pipeline and the control API",
    },
    Rule {
        under: "src/codec",
        forbidden: &[
            "crate::sfu",
            "crate::signal",
            "crate::api",
            "crate::pipeline",
            "crate::db",
            "crate::config",
            "axum",
            "sqlx",
        ],
        why: "the codec is a leaf: it knows frames and models only",
    },
    Rule {
        under: "src/db",
        forbidden: &["crate::sfu", "crate::signal", "crate::api", "crate::pipeline", "crate::codec", "axum"],
        why: "the data layer is below everything that stores",
    },
    Rule {
        under: "src/signal",
        forbidden: &["crate::api", "crate::pipeline"],
        why: "signaling sits on the router, under the pipeline and the control API",
    },
    Rule {
        under: "src/pipeline",
        forbidden: &["crate::api", "axum"],
        why: "the pipeline is driven by the control API, not the other way round",
    },
    Rule {
        under: "src/config.rs",
        forbidden: &["crate::api", "crate::sfu", "crate::signal", "crate::pipeline", "crate::db", "crate::codec"],
        why: "configuration is read before any layer starts",
    },
];

/// The only files whose non-test code reads a clock, each for its reason. Everything else gets
/// its time as a parameter or through `wall::Clock`.
const CLOCK_READERS: &[(&str, &str)] = &[
    ("src/wall.rs", "the wall clock itself"),
    ("src/main.rs", "the command line's token minting"),
    ("src/sfu/driver.rs", "the router's driver: the one place the router's time comes from"),
    ("src/pipeline/aic.rs", "the AIC stage measures its own per-frame latency"),
    ("src/pipeline/speech/workers.rs", "the Whisper workers measure inference time"),
    ("src/codec/aic/train.rs", "offline training reports its progress"),
    ("src/codec/aic/train_enhance.rs", "offline training reports its progress"),
    ("src/codec/aic/train_vocoder.rs", "offline training reports its progress"),
    ("src/signal/livekit/session.rs", "a LiveKit session's join time and token expiry, on the wall clock"),
    ("src/signal/livekit/session/socket.rs", "a LiveKit session's WebSocket loop: its ping and refresh deadlines"),
    ("src/signal/livekit/mod.rs", "the LiveKit routes check tokens at the edge"),
    ("src/signal/whip.rs", "the WHIP routes check tokens at the edge"),
    ("src/signal/token.rs", "token verification against the wall clock"),
];

const CLOCK_CALLS: &[&str] = &["Instant::now(", "SystemTime::now(", "wall::unix_ms(", "wall::unix_secs(", "Utc::now("];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code up to its test module (test modules close the files, by convention here),
/// without comment lines.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source file");
    let end = text.find("#[cfg(test)]").unwrap_or(text.len());
    text[..end].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

fn relative(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    path.strip_prefix(root).expect("under the crate").to_string_lossy().replace('\\', "/")
}

fn all_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    files.sort();
    assert!(files.len() > 50, "found only {} source files", files.len());
    files
}

#[test]
fn layers_import_only_downwards() {
    let mut broken = Vec::new();
    for file in all_sources() {
        let name = relative(&file);
        let text = code(&file);
        for rule in RULES.iter().filter(|r| name == r.under || name.starts_with(&format!("{}/", r.under))) {
            for word in rule.forbidden {
                if let Some(line) = text.lines().find(|l| mentions(l, word)) {
                    broken.push(format!("{name} mentions `{word}` ({}): {}", rule.why, line.trim()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

/// `word` as a path or crate name, not as part of a longer identifier (`redis` is not
/// `credis`, `crate::db` is not `crate::dbx`).
fn mentions(line: &str, word: &str) -> bool {
    line.match_indices(word).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + word.len()..].chars().next();
        let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !ident(before) && !ident(after)
    })
}

#[test]
fn only_drivers_read_the_clock() {
    let mut readers = Vec::new();
    for file in all_sources() {
        let name = relative(&file);
        let text = code(&file);
        if CLOCK_CALLS.iter().any(|c| text.contains(c)) && !CLOCK_READERS.iter().any(|(f, _)| *f == name) {
            readers.push(name);
        }
    }
    assert!(readers.is_empty(), "these read the clock but are not drivers: {readers:?}");
    // The list stays true: every file on it still reads a clock.
    for (file, why) in CLOCK_READERS {
        let text = code(&Path::new(env!("CARGO_MANIFEST_DIR")).join(file));
        assert!(CLOCK_CALLS.iter().any(|c| text.contains(c)), "{file} no longer reads the clock ({why}): drop it");
    }
}

/// The module path of a source file: `src/sfu/core/forwarding.rs` is `["sfu", "core", "forwarding"]`.
fn module_of(name: &str) -> Vec<String> {
    let mut parts: Vec<String> =
        name.trim_start_matches("src/").trim_end_matches(".rs").split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib" || p == "main") {
        parts.pop();
    }
    parts
}

/// The file that holds the module at `path`, or the deepest one above it that exists (a path
/// that names an item ends in its module's file).
fn file_of(path: &[String], files: &[String]) -> Option<String> {
    (0..=path.len()).rev().find_map(|n| {
        let stem = path[..n].join("/");
        [format!("src/{stem}.rs"), format!("src/{stem}/mod.rs")].into_iter().find(|f| files.contains(f))
    })
}

/// The files a file imports from through `crate::` and `super::` paths (a module's own
/// children, which `self::` reaches, are part of it, not imports).
fn imports(name: &str, text: &str, files: &[String]) -> Vec<String> {
    let here = module_of(name);
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::").chain(text.match_indices("super::")) {
        if text[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let path: Vec<&str> = text[at..]
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .collect();
        let mut target = if path[0] == "crate" { Vec::new() } else { here.clone() };
        let mut rest = &path[..];
        if path[0] == "crate" {
            rest = &path[1..];
        }
        while rest.first() == Some(&"super") {
            target.pop();
            rest = &rest[1..];
        }
        target.extend(rest.iter().filter(|p| !p.is_empty()).map(|p| p.to_string()));
        if let Some(file) = file_of(&target, files).filter(|f| f != name) {
            out.push(file);
        }
    }
    out
}

#[test]
fn no_import_circles() {
    let sources = all_sources();
    let names: Vec<String> = sources.iter().map(|f| relative(f)).collect();
    let edges: Vec<(String, Vec<String>)> =
        sources.iter().zip(&names).map(|(f, n)| (n.clone(), imports(n, &code(f), &names))).collect();
    let reaches = |from: &str, to: &str| {
        let (mut seen, mut todo) = (std::collections::HashSet::new(), vec![from.to_string()]);
        while let Some(f) = todo.pop() {
            if f == to {
                return true;
            }
            if seen.insert(f.clone())
                && let Some((_, next)) = edges.iter().find(|(n, _)| *n == f)
            {
                todo.extend(next.iter().cloned());
            }
        }
        false
    };
    let mut circles = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            if from < to && reaches(to, from) {
                circles.push(format!("{from} ⇄ {to}"));
            }
        }
    }
    assert!(circles.is_empty(), "files that import each other (directly or not):\n{}", circles.join("\n"));
    let sfu_core = edges.iter().find(|(n, _)| n == "src/sfu/core/forwarding.rs").expect("the router's forwarding");
    assert!(sfu_core.1.contains(&"src/sfu/core.rs".to_string()), "the import reader sees `use super::*`");
}

#[test]
fn the_rules_catch_what_they_forbid() {
    assert!(mentions("use crate::db::Db;", "crate::db"));
    assert!(mentions("    axum::Json(x)", "axum"));
    assert!(!mentions("use crate::dbx::Db;", "crate::db"));
    assert!(!mentions("let credis = 1;", "redis"));
    let sample = "fn a() {}\n// Instant::now() in a comment\n#[cfg(test)]\nmod tests { fn b() { Instant::now(); } }";
    let dir = std::env::temp_dir().join(format!("auralink-architecture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sample.rs");
    std::fs::write(&file, sample).unwrap();
    assert!(!CLOCK_CALLS.iter().any(|c| code(&file).contains(c)), "comments and tests do not count");
    std::fs::remove_dir_all(&dir).unwrap();
}
