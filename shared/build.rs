//! Two things the crate's sources need from the build: the cl100k vocabulary in a form read in
//! place (with feature `tokens` only), and which Lambda wirings the enabled features allow.
//!
//! Turns tiktoken's cl100k vocabulary (`data/cl100k_base.tiktoken`: one `base64 rank` line per
//! token) into the form `src/cl100k.rs` reads in place: every token's bytes back to back in
//! rank order, and each token's length (one byte: no token is longer than 255). Read in place,
//! the vocabulary needs no decoding at start-up, and the binary carries 0.7 MiB instead of 1.7
//! (lengths rather than u32 ends: 0.29 MiB less in chunk, tag and chat, whose size is cold-start
//! time; the ends are summed into 0.4 MiB of heap when the tokenizer is first used).

use std::io::Write;

fn main() {
    wiring_cfgs();
    println!("cargo::rerun-if-changed=build.rs");
    if enabled("tokens") {
        vocabulary();
    }
}

/// Whether the crate is built with `feature`.
fn enabled(feature: &str) -> bool {
    let var = format!("CARGO_FEATURE_{}", feature.to_uppercase().replace('-', "_"));
    std::env::var_os(var).is_some()
}

/// Which backends, data and stages each Lambda's wiring (`src/lambda/wire.rs`) needs: one
/// table, so the wirings say `#[cfg(wire_tag)]` instead of repeating feature lists, and
/// `every_wiring` marks the build with all of them (the test suite), where a function is picked
/// at run time. The function crates enable the same lists (`tests/tests/lambda_features.rs`).
fn wiring_cfgs() {
    const WIRINGS: &[(&str, &[&str])] = &[
        (
            "wire_ingest",
            &["http", "aws-s3", "aws-sqs", "aws-s3vectors"],
        ),
        (
            "wire_chunk",
            &[
                "stage-chunk",
                "tokens",
                "splitter",
                "aws-s3",
                "aws-sqs",
                "aws-s3vectors",
            ],
        ),
        (
            "wire_embed",
            &["stage-embed", "aws-s3", "aws-sqs", "aws-s3vectors"],
        ),
        (
            "wire_tag",
            &["stage-tag", "tokens", "aws-s3", "aws-sqs", "aws-s3vectors"],
        ),
        ("wire_chat", &["http", "chat", "tokens", "aws-s3vectors"]),
        ("wire_sync", &["aws-sqs", "aws-s3vectors"]),
    ];
    let mut every = true;
    for (cfg, features) in WIRINGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if features.iter().all(|f| enabled(f)) {
            println!("cargo::rustc-cfg={cfg}");
        } else {
            every = false;
        }
    }
    println!("cargo::rustc-check-cfg=cfg(every_wiring)");
    if every {
        println!("cargo::rustc-cfg=every_wiring");
    }
}

fn vocabulary() {
    let source = "data/cl100k_base.tiktoken";
    println!("cargo::rerun-if-changed={source}");
    let text = std::fs::read_to_string(source).expect("the cl100k vocabulary");
    let (mut arena, mut lengths) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let (token, rank) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("{source} line {}: no rank", n + 1));
        // Ranks are the line numbers in tiktoken's files; the arena relies on it.
        assert_eq!(
            rank.parse::<usize>().ok(),
            Some(n),
            "{source} line {}",
            n + 1
        );
        let bytes = decode_base64(token).unwrap_or_else(|| panic!("{source} line {}", n + 1));
        let length = u8::try_from(bytes.len())
            .unwrap_or_else(|_| panic!("{source} line {}: longer than 255 bytes", n + 1));
        arena.extend(bytes);
        lengths.push(length);
    }
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::File::create(out.join("cl100k.tokens"))
        .and_then(|mut f| f.write_all(&arena))
        .expect("writing cl100k.tokens");
    std::fs::File::create(out.join("cl100k.lengths"))
        .and_then(|mut f| f.write_all(&lengths))
        .expect("writing cl100k.lengths");
}

/// Standard base64 with padding, as tiktoken writes it; `None` for anything else.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = n << 6 | value(c)? as u32;
        }
        n <<= 6 * pad as u32;
        out.extend(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}
