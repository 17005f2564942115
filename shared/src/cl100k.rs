//! OpenAI's cl100k_base encoding, for counting tokens: the same pieces and merges as tiktoken,
//! in about a tenth of the memory.
//!
//! tiktoken-rs keeps the vocabulary three times over (encoder, decoder, sorted list: one heap
//! allocation per token each) plus 128 clones of its splitting regex, about 24 MiB resident
//! once loaded — more than the rest of an idle `pai serve`. Counting needs only bytes → rank:
//! here the 100,256 tokens are read in place from the binary (their bytes back to back and
//! each one's length, 0.7 MiB, made by `build.rs` from the vocabulary file tiktoken publishes
//! in `shared/data/`), found through a hash table of ranks (0.6 MiB, built on first use with
//! where each token ends, 0.4 MiB). A test checks every count and every cut against
//! tiktoken-rs.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::{Mutex, OnceLock};

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
    /// Where token `rank` ends in `tokens` (it starts where `rank - 1` ends).
    ends: Box<[u32]>,
    /// Ranks, found by the hash of their bytes: four bytes a token.
    table: HashTable<Rank>,
    pieces: Regex,
    merged: Mutex<MergeMemo>,
}

static TOKENS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.tokens"));
static LENGTHS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k.lengths"));

/// The process's encoder, built on first use (a few ms: the hash table).
pub fn cl100k() -> &'static Cl100k {
    static ENCODER: OnceLock<Cl100k> = OnceLock::new();
    ENCODER.get_or_init(|| Cl100k::new(TOKENS, LENGTHS))
}

fn hash(bytes: &[u8]) -> u64 {
    BuildHasherDefault::<FxHasher>::default().hash_one(bytes)
}

impl Cl100k {
    fn new(tokens: &'static [u8], lengths: &[u8]) -> Cl100k {
        let ends: Box<[u32]> = lengths
            .iter()
            .scan(0u32, |end, &length| {
                *end += u32::from(length);
                Some(*end)
            })
            .collect();
        let mut table = HashTable::with_capacity(ends.len());
        for rank in 0..ends.len() as Rank {
            let bytes = token_of(tokens, &ends, rank);
            table.insert_unique(hash(bytes), rank, |&r| hash(token_of(tokens, &ends, r)));
        }
        Cl100k {
            tokens,
            ends,
            table,
            pieces: Regex::new(PATTERN).expect("the cl100k pattern"),
            merged: Mutex::default(),
        }
    }

    fn token(&self, rank: Rank) -> &[u8] {
        token_of(self.tokens, &self.ends, rank)
    }

    /// The pre-tokenizer's pieces of `text`: tokens never cross them.
    fn pieces<'t>(&self, text: &'t str) -> impl Iterator<Item = &'t str> {
        self.piece_spans(text).map(|(start, end)| &text[start..end])
    }

    /// Where each piece of `text` starts and ends. What a piece is depends only on the text
    /// from its start on (the pattern looks neither behind nor at the text's start), which is
    /// what lets [`TextTokens`] reuse a whole text's pieces for its slices.
    fn piece_spans(&self, text: &str) -> impl Iterator<Item = (usize, usize)> {
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
            Some((m.start(), end))
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
        self.first_token_lengths(text, usize::MAX)
    }

    /// The byte lengths of the first tokens of `text`, stopping once there are more than
    /// `limit`: a long text's head without tokenizing the rest.
    pub fn first_token_lengths(&self, text: &str, limit: usize) -> Vec<usize> {
        let mut lengths = Vec::new();
        for piece in self.pieces(text) {
            if lengths.len() > limit {
                break;
            }
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
        // Most pieces are one token: asked of the vocabulary before the memo.
        if self.is_token(piece.as_bytes()) {
            return 1;
        }
        if let Some(n) = self.merged.lock().expect("merge memo").get(piece) {
            return n;
        }
        let n = self.merge(piece.as_bytes()).len() - 1;
        self.merged.lock().expect("merge memo").insert(piece, n);
        n
    }
}

/// Token counts of the pieces the vocabulary lacks, as merged last (the words of an archive
/// recur: names, compounds, numbers), so each is merged once rather than in every document
/// and every overlapping chunk candidate. Two generations bound it: when the young one is
/// full it becomes the old one, and a piece found only in the old one is kept young again;
/// so the memo stays within 2 × `MEMO_GENERATION` pieces (about 0.4 MiB). Tokenizers do the
/// same (Hugging Face's BPE keeps 10,000 words).
#[derive(Default)]
struct MergeMemo {
    young: HashMap<Box<str>, u16, BuildHasherDefault<FxHasher>>,
    old: HashMap<Box<str>, u16, BuildHasherDefault<FxHasher>>,
}

const MEMO_GENERATION: usize = 4096;

impl MergeMemo {
    fn get(&mut self, piece: &str) -> Option<usize> {
        if let Some(&n) = self.young.get(piece) {
            return Some(n as usize);
        }
        let n = self.old.get(piece).copied()?;
        self.insert(piece, n as usize);
        Some(n as usize)
    }

    fn insert(&mut self, piece: &str, tokens: usize) {
        // A piece of more than 65,535 tokens is merged each time it is met.
        let Ok(tokens) = u16::try_from(tokens) else {
            return;
        };
        if self.young.len() >= MEMO_GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(piece.into(), tokens);
    }
}

fn token_of<'a>(tokens: &'a [u8], ends: &[u32], rank: Rank) -> &'a [u8] {
    let start = match rank {
        0 => 0,
        r => ends[r as usize - 1] as usize,
    };
    &tokens[start..ends[rank as usize] as usize]
}

/// One text tokenized once, so that the count of any slice of it comes from sums over the
/// whole text's pieces, with only the slice's edges tokenized again. A splitter sizes about
/// fifteen overlapping candidates per chunk; counting each one afresh tokenized a document
/// several times over (a quarter of `pai`'s CPU in the 1,000-document bench).
///
/// Exact, not an estimate: a slice is cut into the same pieces as the whole text from any
/// whole-text piece start it reaches in its own cutting, as far as each piece's *reach* (the
/// text the pattern looked at to cut it: the piece and the character after it, or for spaces
/// the whole run of spaces and the character after it) lies inside the slice. Before that
/// start and after the last such piece the slice is tokenized on its own. A test compares
/// thousands of slices with counting them alone.
pub struct TextTokens<'t> {
    text: &'t str,
    /// Where each piece starts, then `text.len()`.
    starts: Vec<u32>,
    /// Tokens in the pieces before piece `k` (one entry more than pieces).
    before: Vec<u32>,
    /// How far the text must reach for piece `k` and every piece before it to be cut as in
    /// the whole text (a running maximum, so it can be searched).
    reach: Vec<u32>,
    encoder: &'static Cl100k,
}

impl<'t> TextTokens<'t> {
    pub fn new(text: &'t str) -> TextTokens<'t> {
        let encoder = cl100k();
        let (mut starts, mut before, mut reach) = (Vec::new(), vec![0u32], Vec::new());
        // Offsets are u32 to halve the tables; a text beyond 4 GiB is counted slice by slice.
        if u32::try_from(text.len()).is_ok() {
            let (mut total, mut furthest) = (0u32, 0u32);
            for (start, end) in encoder.piece_spans(text) {
                total += encoder.piece_tokens(&text[start..end]) as u32;
                let looked_to = match text[start..end].chars().all(char::is_whitespace) {
                    true => text[start..]
                        .find(|c: char| !c.is_whitespace())
                        .map_or(text.len(), |n| start + n),
                    false => end,
                };
                let looked_to = text[looked_to..]
                    .chars()
                    .next()
                    .map_or(text.len(), |c| looked_to + c.len_utf8());
                furthest = furthest.max(looked_to as u32);
                starts.push(start as u32);
                before.push(total);
                reach.push(furthest);
            }
            starts.push(text.len() as u32);
        }
        TextTokens {
            text,
            starts,
            before,
            reach,
            encoder,
        }
    }

    /// Tokens of the whole text.
    pub fn total(&self) -> usize {
        match self.reach.is_empty() && !self.text.is_empty() {
            true => self.encoder.count(self.text),
            false => *self.before.last().expect("one entry at least") as usize,
        }
    }

    /// Tokens of `text[start..end]`, exactly as if it were counted alone.
    pub fn count(&self, start: usize, end: usize) -> usize {
        let slice = &self.text[start..end];
        let mut count = 0;
        for (from, to) in self.encoder.piece_spans(slice) {
            if let Ok(k) = self.starts.binary_search(&((start + from) as u32)) {
                // Pieces k.. are the whole text's as far as their reach stays in the slice.
                let safe = self.reach.partition_point(|&r| r as usize <= end);
                if safe > k {
                    let resume = self.starts[safe] as usize;
                    return count
                        + (self.before[safe] - self.before[k]) as usize
                        + self.encoder.count(&self.text[resume..end]);
                }
            }
            count += self.encoder.piece_tokens(&slice[from..to]);
        }
        count
    }
}

/// Chunks sized in cl100k tokens: the splitter's candidates are slices of the text.
#[cfg(feature = "splitter")]
impl text_splitter::ChunkSizer for &TextTokens<'_> {
    fn size(&self, chunk: &str) -> usize {
        let start = (chunk.as_ptr() as usize).wrapping_sub(self.text.as_ptr() as usize);
        match start.checked_add(chunk.len()) {
            Some(end) if end <= self.text.len() && self.text.is_char_boundary(start) => {
                self.count(start, end)
            }
            _ => self.encoder.count(chunk),
        }
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
        let texts: Vec<String> = hard_cases().into_iter().chain(samples()).collect();
        assert!(texts.len() > 40);
        for text in &texts {
            let expected = reference.encode_ordinary(text);
            assert_eq!(ours.count(text), expected.len(), "{text:?}");
            // Again, now from the memo of merged pieces.
            assert_eq!(ours.count(text), expected.len(), "{text:?}");
            let lengths: Vec<usize> = expected
                .iter()
                .map(|&t| reference.decode_bytes(&[t]).unwrap().len())
                .collect();
            assert_eq!(ours.token_lengths(text), lengths, "{text:?}");
        }
    }

    #[test]
    fn a_slice_counts_as_if_it_stood_alone() {
        let ours = cl100k();
        let texts: Vec<String> = hard_cases().into_iter().chain(samples()).collect();
        // A fixed sequence, not a random one: the test must be deterministic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let mut slices = 0;
        for text in &texts {
            let tokens = TextTokens::new(text);
            assert_eq!(tokens.total(), ours.count(text), "{text:?}");
            let bounds: Vec<usize> = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .collect();
            // Short slices near every kind of edge and long ones, as a splitter asks for.
            for _ in 0..bounds.len().min(400) {
                let a = bounds[next(bounds.len())];
                let span = [3, 20, 200, 2000][next(4)];
                let b = bounds[bounds.partition_point(|&i| i < a)
                    + next(span).min(bounds.len() - 1 - bounds.partition_point(|&i| i < a))];
                assert_eq!(
                    tokens.count(a, b),
                    ours.count(&text[a..b]),
                    "{:?}",
                    &text[a..b]
                );
                slices += 1;
            }
        }
        assert!(slices > 4000, "{slices}");
    }

    #[test]
    fn the_merge_memo_stays_bounded_and_keeps_what_recurs() {
        let mut memo = MergeMemo::default();
        memo.insert("recurring", 3);
        for i in 0..3 * MEMO_GENERATION {
            memo.insert(&format!("piece{i}"), 2);
            if i % 1000 == 0 {
                assert_eq!(memo.get("recurring"), Some(3));
            }
        }
        assert!(memo.young.len() + memo.old.len() <= 2 * MEMO_GENERATION);
        assert_eq!(memo.get("piece0"), None, "the oldest are gone");
        assert_eq!(
            memo.get(&format!("piece{}", 3 * MEMO_GENERATION - 1)),
            Some(2)
        );
        memo.insert("huge", 70_000);
        assert_eq!(memo.get("huge"), None, "counts beyond u16 are not kept");
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
