//! OpenAI's cl100k_base encoding, for counting tokens: the same pieces and merges as tiktoken,
//! in about a tenth of the memory.
//!
//! tiktoken-rs keeps the vocabulary three times over (encoder, decoder, sorted list: one heap
//! allocation per token each) plus 128 clones of its splitting regex, about 24 MiB resident
//! once loaded — more than the rest of an idle `pai serve`. Counting needs only bytes → rank:
//! here the 100,256 tokens are read in place from the binary (their bytes back to back and
//! where each ends, 1 MiB, made by `build.rs` from the vocabulary file tiktoken publishes in
//! `shared/data/`), found through a hash table of ranks (0.6 MiB, built on first use). A test
//! checks every count and every cut against tiktoken-rs.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::OnceLock;

use hashbrown::HashTable;
use regex::Regex;
use rustc_hash::FxHasher;

type Rank = u32;

/// cl100k's pre-tokenizer without its two look-arounds, which the `regex` crate lacks: the
/// possessive quantifiers change nothing here (what they keep cannot be matched by what
/// follows), and `\s+(?!\S)|\s` is matched as `\s+` and then shortened in [`Cl100k::pieces`].
const PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s+$|\s*[\r\n]|\s+";

pub struct Cl100k {
    /// Every token's bytes, back to back in rank order (built by `build.rs`).
    tokens: &'static [u8],
    /// Where token `rank` ends in `tokens`, u32 little-endian (it starts where `rank - 1`
    /// ends).
    ends: &'static [u8],
    /// Ranks, found by the hash of their bytes: four bytes a token.
    table: HashTable<Rank>,
    pieces: Regex,
}

static TOKENS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.tokens"));
static ENDS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.ends"));

/// The process's encoder, built on first use (a few ms: the hash table).
pub fn cl100k() -> &'static Cl100k {
    static ENCODER: OnceLock<Cl100k> = OnceLock::new();
    ENCODER.get_or_init(|| Cl100k::new(TOKENS, ENDS))
}

fn hash(bytes: &[u8]) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(bytes)
}

impl Cl100k {
    fn new(tokens: &'static [u8], ends: &'static [u8]) -> Cl100k {
        let count = ends.len() / 4;
        let mut table = HashTable::with_capacity(count);
        for rank in 0..count as Rank {
            let bytes = token_of(tokens, ends, rank);
            table.insert_unique(hash(bytes), rank, |&r| hash(token_of(tokens, ends, r)));
        }
        Cl100k {
            tokens,
            ends,
            table,
            pieces: Regex::new(PATTERN).expect("the cl100k pattern"),
        }
    }

    fn token(&self, rank: Rank) -> &[u8] {
        token_of(self.tokens, self.ends, rank)
    }

    /// The pre-tokenizer's pieces of `text`: tokens never cross them.
    fn pieces<'t>(&self, text: &'t str) -> impl Iterator<Item = &'t str> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let m = self.pieces.find_at(text, at)?;
            let mut end = m.end();
            let piece = m.as_str();
            // `\s+(?!\S)`: a run of spaces before a word leaves its last space to the word
            // (" world"); a single one stands alone (`\s`). Only the final `\s+` matches a
            // run that neither ends the text nor ends in a line break.
            if end < text.len()
                && piece.chars().all(char::is_whitespace)
                && !piece.ends_with(['\r', '\n'])
                && let Some((last, _)) = piece.char_indices().last().filter(|&(i, _)| i > 0)
            {
                end = m.start() + last;
            }
            at = end;
            Some(&text[m.start()..end])
        })
    }

    fn rank(&self, bytes: &[u8]) -> Rank {
        self.table
            .find(hash(bytes), |&r| self.token(r) == bytes)
            .copied()
            .unwrap_or(Rank::MAX)
    }

    fn is_token(&self, bytes: &[u8]) -> bool {
        self.rank(bytes) != Rank::MAX
    }

    /// Merges the bytes of `piece` pair by pair, lowest rank first (the leftmost of equals),
    /// as tiktoken does; returns where each token starts, then `piece.len()`.
    fn merge(&self, piece: &[u8]) -> Vec<usize> {
        // (start of a part, rank of the part merged with its right neighbour)
        let mut parts: Vec<(usize, Rank)> = (0..piece.len())
            .map(|i| {
                let rank = match i + 2 <= piece.len() {
                    true => self.rank(&piece[i..i + 2]),
                    false => Rank::MAX,
                };
                (i, rank)
            })
            .collect();
        parts.push((piece.len(), Rank::MAX));
        let merged_rank = |parts: &[(usize, Rank)], i: usize| match i + 3 < parts.len() {
            true => self.rank(&piece[parts[i].0..parts[i + 3].0]),
            false => Rank::MAX,
        };
        while let Some((i, _)) = parts[..parts.len() - 1]
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1 != Rank::MAX)
            .min_by_key(|(i, p)| (p.1, *i))
        {
            if i > 0 {
                parts[i - 1].1 = merged_rank(&parts, i - 1);
            }
            parts[i].1 = merged_rank(&parts, i);
            parts.remove(i + 1);
        }
        parts.into_iter().map(|(start, _)| start).collect()
    }

    /// The byte length of each token of `text`, in order (ordinary text: special tokens such
    /// as `<|endoftext|>` are read as plain text, as `encode_ordinary` does).
    pub fn token_lengths(&self, text: &str) -> Vec<usize> {
        let mut lengths = Vec::new();
        for piece in self.pieces(text) {
            let bytes = piece.as_bytes();
            if self.is_token(bytes) {
                lengths.push(bytes.len());
            } else {
                lengths.extend(self.merge(bytes).windows(2).map(|w| w[1] - w[0]));
            }
        }
        lengths
    }

    /// How many tokens `text` is.
    pub fn count(&self, text: &str) -> usize {
        self.pieces(text)
            .map(|piece| self.piece_tokens(piece))
            .sum()
    }

    /// How many tokens one piece of the pre-tokenizer is.
    fn piece_tokens(&self, piece: &str) -> usize {
        match self.is_token(piece.as_bytes()) {
            true => 1,
            false => self.merge(piece.as_bytes()).len() - 1,
        }
    }
}

fn token_of<'a>(tokens: &'a [u8], ends: &[u8], rank: Rank) -> &'a [u8] {
    let end = |r: usize| u32::from_le_bytes(ends[4 * r..4 * r + 4].try_into().expect("4 bytes"));
    let start = match rank {
        0 => 0,
        r => end(r as usize - 1) as usize,
    };
    &tokens[start..end(rank as usize) as usize]
}

/// Counts the many overlapping candidates a splitter sizes in one document: each piece the
/// vocabulary lacks is merged once, not once per candidate that contains it. Exact: a text's
/// count is the sum of its pieces' counts, whichever text the piece was first seen in.
pub struct PieceCounter {
    encoder: &'static Cl100k,
    merged: RefCell<HashMap<String, usize, BuildHasherDefault<FxHasher>>>,
}

impl PieceCounter {
    pub fn new() -> PieceCounter {
        PieceCounter {
            encoder: cl100k(),
            merged: RefCell::default(),
        }
    }

    pub fn count(&self, text: &str) -> usize {
        let mut merged = self.merged.borrow_mut();
        self.encoder
            .pieces(text)
            .map(|piece| {
                // Most pieces are one token: asked of the vocabulary before the memo.
                if self.encoder.is_token(piece.as_bytes()) {
                    return 1;
                }
                if let Some(&n) = merged.get(piece) {
                    return n;
                }
                let n = self.encoder.merge(piece.as_bytes()).len() - 1;
                merged.insert(piece.to_owned(), n);
                n
            })
            .sum()
    }
}

impl Default for PieceCounter {
    fn default() -> Self {
        PieceCounter::new()
    }
}

/// Chunks sized in cl100k tokens.
#[cfg(feature = "splitter")]
impl text_splitter::ChunkSizer for &PieceCounter {
    fn size(&self, chunk: &str) -> usize {
        self.count(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Texts that exercise every branch of the pre-tokenizer and long merges.
    fn hard_cases() -> Vec<String> {
        let mut cases: Vec<String> = [
            "",
            " ",
            "  ",
            "hello world",
            "hello  world",
            "hello   world  ",
            "hello\n\nworld",
            "a \n b",
            "end with spaces   ",
            "end with newline \n",
            "tabs\t\tand\u{a0}nbsp\u{3000}ideographic",
            "I'm sure you'll see they've done it, hasn't he? 'S 'LL 'Re",
            "12345678 1.234,56 € 0,5% -42 +7",
            "Rechnung Nr. BH-24-0962 über 1.234,56 EUR — fällig am 14.03.2025",
            "J'ai payé l'hôtel à Zürich; naïve façade, cœur",
            "日本語のテキストと中文混合 한국어 text",
            "emoji 🎉🎉 and ZWJ 👩‍👩‍👧 family",
            "<|endoftext|> is ordinary text here",
            "\r\n\r\n  \r\n x",
            "!!!???... ---\n\n***",
            "   leading spaces and\ttab\t",
            "x\u{2028}y\u{85}z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        cases.push("Donaudampfschifffahrtsgesellschaftskapitänsmützenabzeichen".repeat(3));
        cases.push("aGVsbG8gd29ybGQ=".repeat(40));
        cases.push(" ".repeat(100) + "word");
        cases
    }

    fn samples() -> Vec<String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/samples/documents");
        let mut texts: Vec<String> = std::fs::read_dir(dir)
            .expect("the bundled sample documents")
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        texts.sort();
        texts
    }

    #[test]
    fn counts_and_cuts_exactly_as_tiktoken() {
        let reference = tiktoken_rs::cl100k_base().unwrap();
        let ours = cl100k();
        let counter = PieceCounter::new();
        let texts: Vec<String> = hard_cases().into_iter().chain(samples()).collect();
        assert!(texts.len() > 40);
        for text in &texts {
            let expected = reference.encode_ordinary(text);
            assert_eq!(ours.count(text), expected.len(), "{text:?}");
            assert_eq!(counter.count(text), expected.len(), "{text:?}");
            let lengths: Vec<usize> = expected
                .iter()
                .map(|&t| reference.decode_bytes(&[t]).unwrap().len())
                .collect();
            assert_eq!(ours.token_lengths(text), lengths, "{text:?}");
        }
    }

    #[test]
    fn every_token_of_the_vocabulary_is_one_token() {
        let ours = cl100k();
        assert_eq!(ours.table.len(), 100_256);
        assert!((0..100_256).all(|r| ours.rank(ours.token(r)) == r));
        assert_eq!(ours.count(" Conveyor"), 1);
        assert_eq!(ours.rank(b" Conveyor"), 100_255);
    }
}
