//! What each Lambda function links, from its own package (what `sam build` builds: see the
//! `[package.metadata.lambda.build]` of each `functions/*/Cargo.toml`): exactly the shared
//! crate's features it uses, and none of the SDK crates, SQLite, axum, PDF reader or text
//! splitter of the resources and work it does not have. Read from `cargo tree` (resolution
//! only, no build), so a function crate that gains a feature, or a feature that gains a
//! dependency, fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// The shared crate's features a function's package enables, and the crates it links.
struct Resolved {
    features: BTreeSet<String>,
    crates: BTreeSet<String>,
}

fn resolve(package: &str) -> Resolved {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            package,
            "-e",
            "normal",
        ])
        .args(["--prefix", "none", "-f", "{p}|{f}"])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut features = BTreeSet::new();
    let mut crates = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (p, f) = line.split_once('|').unwrap_or((line, ""));
        let name = p.split_whitespace().next().unwrap_or_default().to_string();
        if name == "pai-shared" {
            features.extend(
                f.trim_end_matches(" (*)")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
        }
        crates.insert(name);
    }
    Resolved { features, crates }
}

/// Every feature of the shared crate a function might take, and which functions take it.
fn expected() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        (
            "aws-dynamodb",
            &["ingest", "chunk", "embed", "tag", "chat", "sync"][..],
        ),
        (
            "aws-ssm",
            &["ingest", "chunk", "embed", "tag", "chat", "sync"],
        ),
        (
            "aws-s3vectors",
            &["ingest", "chunk", "embed", "tag", "chat", "sync"],
        ),
        ("aws-s3", &["ingest", "chunk", "embed", "tag"]),
        ("aws-sqs", &["ingest", "chunk", "embed", "tag", "sync"]),
        // Only the functions that call a model build one: chunk and sync take the models'
        // names from the settings (`providers::names`).
        ("bedrock", &["ingest", "embed", "tag", "chat"]),
        ("http", &["ingest", "chat"]),
        ("lambda-http", &["ingest", "chat"]),
        ("chat", &["chat"]),
        ("tokens", &["chunk", "tag", "chat"]),
        ("splitter", &["chunk"]),
        ("pdf", &["chunk"]),
        ("stage-chunk", &["chunk"]),
        ("stage-embed", &["embed"]),
        ("stage-tag", &["tag"]),
        ("local", &[]),
        ("contract", &[]),
    ])
}

#[test]
fn each_function_package_enables_exactly_its_features() {
    let mut wrong = Vec::new();
    for function in ["ingest", "chunk", "embed", "tag", "chat", "sync"] {
        let got = resolve(&format!("pai-{function}")).features;
        for (feature, takers) in expected() {
            let wanted = takers.contains(&function);
            if got.contains(feature) != wanted {
                wrong.push(format!(
                    "{function} {} {feature}",
                    if wanted { "lacks" } else { "has" }
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn each_function_links_only_the_backends_it_binds() {
    // (crate, the functions that may link it)
    let rules: &[(&str, &[&str])] = &[
        ("aws-sdk-s3", &["ingest", "chunk", "embed", "tag"]),
        ("aws-sdk-sqs", &["ingest", "chunk", "embed", "tag", "sync"]),
        (
            "aws-sdk-bedrockruntime",
            &["ingest", "embed", "tag", "chat"],
        ),
        ("axum", &["ingest", "chat"]),
        ("lambda_http", &["ingest", "chat"]),
        ("pdf-extract", &["chunk"]),
        ("rusqlite", &[]),
        // The text splitter and the ICU segmenter data it carries: only chunk splits text.
        // (The cl100k tokenizer is this crate's own code: its feature, `tokens`, is held to
        // chunk, tag and chat above.)
        ("text-splitter", &["chunk"]),
        ("icu_segmenter", &["chunk"]),
        ("icu_segmenter_data", &["chunk"]),
    ];
    let mut wrong = Vec::new();
    for function in ["ingest", "chunk", "embed", "tag", "chat", "sync"] {
        let crates = resolve(&format!("pai-{function}")).crates;
        for (krate, allowed) in rules {
            if crates.contains(*krate) && !allowed.contains(&function) {
                wrong.push(format!("{function} links {krate}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// `sam build` names only the binary (`--bin`), which at the workspace root would select every
/// member and unify their features; the package's cargo-lambda metadata narrows it to itself.
#[test]
fn sam_builds_each_function_as_its_own_package() {
    for function in ["ingest", "chunk", "embed", "tag", "chat", "sync"] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../functions/").to_string()
            + function
            + "/Cargo.toml";
        let manifest = std::fs::read_to_string(&path).expect("function manifest");
        let wanted = format!("[package.metadata.lambda.build]\npackages = [\"pai-{function}\"]");
        assert!(manifest.contains(&wanted), "{path} lacks {wanted:?}");
        // …and builds it for size (cold start), which `pai`'s release profile does not: optimised
        // for size, linked without PIE (its relocations were 1 MiB).
        let opt = if function == "chunk" { "s" } else { "z" };
        for wanted in [
            format!("'profile.release.opt-level=\"{opt}\"'"),
            "'target.aarch64-unknown-linux-gnu.rustflags=[\"-C\", \"link-arg=-no-pie\"]'".into(),
        ] {
            assert!(manifest.contains(&wanted), "{path} lacks {wanted}");
        }
        // Linked without unwind tables exactly when it aborts: an unwinding binary without them
        // would abort on its first panic and lose the rest of its batch (functions/link.rs).
        assert!(
            manifest.contains("\nbuild = \"../link.rs\"\n"),
            "{path} lacks its build script"
        );
        let aborts = manifest.contains("'profile.release.panic=\"abort\"'");
        let without_tables = manifest.contains("'env.PAI_LINK_WITHOUT_UNWIND_TABLES=\"1\"'");
        assert_eq!(
            aborts, without_tables,
            "{path}: aborts {aborts}, without unwind tables {without_tables}"
        );
    }
}
