//! Keyword relevance for hybrid retrieval: terms (folded words without English, German and
//! French function words, lightly stemmed), BM25 scoring of a candidate set, and an inverted
//! index that finds the best BM25 chunks of a whole corpus without reading every chunk.
//!
//! Embeddings miss rare exact tokens (an invoice number, a name, a plate); BM25 misses
//! paraphrases and other languages. Chat fuses both by rank, so neither can drown the other.

use std::collections::HashMap;

/// Term counts of one chunk or question: bounded by its length, so a fast unkeyed hash is safe
/// even for hostile text (the corpus-wide maps keep std's keyed one).
type TermCounts = HashMap<String, u32, std::hash::BuildHasherDefault<rustc_hash::FxHasher>>;

/// BM25's usual constants: term-frequency saturation and length normalisation.
const K1: f32 = 1.2;
const B: f32 = 0.75;

/// Function words of English, German and French (and French elisions: l', d', j', qu'…),
/// which say nothing about what a passage is about.
pub fn is_function_word(w: &str) -> bool {
    const STOP: &[&str] = &[
        // English
        "a", "about", "after", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been",
        "before", "but", "by", "can", "could", "did", "do", "does", "for", "from", "get", "got",
        "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it",
        "its", "me", "much", "many", "my", "no", "not", "of", "on", "or", "our", "out", "she",
        "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this",
        "those", "to", "up", "us", "was", "we", "were", "what", "when", "where", "which", "who",
        "whom", "why", "will", "with", "would", "you", "your", "there", "any", "ever",
        // German
        "aber", "als", "am", "an", "auch", "auf", "aus", "bei", "bin", "bis", "bist", "da", "dass",
        "dem", "den", "der", "des", "die", "dies", "diese", "diesem", "dieser", "dir", "das", "du",
        "durch", "ein", "eine", "einem", "einen", "einer", "eines", "er", "es", "fur", "gibt",
        "hat", "habe", "haben", "hatte", "hast", "ich", "ihr", "ihre", "im", "in", "ist", "ja",
        "kann", "mein", "meine", "meinem", "meinen", "meiner", "meines", "mich", "mir", "mit",
        "nach", "nicht", "noch", "nur", "ob", "oder", "sein", "seine", "sich", "sie", "sind", "so",
        "uber", "um", "und", "uns", "unser", "viel", "vom", "von", "vor", "war", "waren", "was",
        "wann", "welche", "welchem", "welchen", "welcher", "welches", "wer", "wie", "wir", "wird",
        "wo", "wurde", "wurden", "zu", "zum", "zur", "denn", "man", // French
        "a", "ai", "as", "au", "aux", "avec", "avez", "avoir", "c", "ce", "ces", "cet", "cette",
        "d", "dans", "de", "des", "du", "elle", "en", "est", "et", "etait", "ete", "eu", "il",
        "ils", "j", "je", "l", "la", "le", "les", "leur", "lui", "m", "ma", "mais", "me", "mes",
        "moi", "mon", "n", "ne", "nous", "on", "ont", "ou", "par", "pas", "pour", "qu", "que",
        "quel", "quelle", "quelles", "quels", "qui", "s", "sa", "se", "ses", "son", "sont", "sur",
        "t", "ta", "te", "tes", "toi", "ton", "tu", "un", "une", "vos", "votre", "vous", "y",
        "combien", "quand", "ou", "comment", "fait",
    ];
    // Asked for every word of every chunk indexed: a set, not a scan of 300 words.
    static SET: std::sync::OnceLock<rustc_hash::FxHashSet<&'static str>> =
        std::sync::OnceLock::new();
    SET.get_or_init(|| STOP.iter().copied().collect())
        .contains(w)
}

/// A word reduced to a crude stem shared by its common inflections ("Rechnungen" and
/// "Rechnung", "invoices" and "invoice", "factures" and "facture").
pub fn stem(w: &str) -> String {
    stemmed(w).into_owned()
}

fn stemmed(w: &str) -> std::borrow::Cow<'_, str> {
    let mut s = w;
    for suffix in ["ungen", "ies", "en", "es", "s", "e", "n"] {
        if s.len() > suffix.len() + 3 && s.ends_with(suffix) {
            s = &s[..s.len() - suffix.len()];
            break;
        }
    }
    match w.ends_with("ungen") {
        true => format!("{s}ung").into(),
        false => s.into(),
    }
}

/// Each term of a text, in order: stemmed words that are not function words. The text is
/// folded once and its words are borrowed from it, not allocated one by one.
fn each_term(text: &str, mut term: impl FnMut(&str)) {
    let folded = crate::text::fold(text);
    for w in folded.split(|c: char| !c.is_alphanumeric()) {
        if !w.is_empty()
            && !is_function_word(w)
            && (w.len() > 1 || w.chars().all(|c| c.is_ascii_digit()))
        {
            term(&stemmed(w));
        }
    }
}

/// The terms of a text, in order: stemmed words that are not function words.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    each_term(text, |t| out.push(t.to_string()));
    out
}

/// Term frequencies of a text and its length in terms.
fn frequencies(text: &str) -> (TermCounts, u32) {
    let mut tf = TermCounts::default();
    let mut len = 0;
    each_term(text, |t| {
        len += 1;
        match tf.get_mut(t) {
            Some(n) => *n += 1,
            None => {
                tf.insert(t.to_string(), 1);
            }
        }
    });
    (tf, len)
}

fn idf(documents: f32, with_term: f32) -> f32 {
    ((documents - with_term + 0.5) / (with_term + 0.5) + 1.0).ln()
}

fn term_score(idf: f32, tf: f32, len: f32, average: f32) -> f32 {
    idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * len / average.max(1.0)))
}

/// BM25 of each text for the query, with statistics from the texts themselves (a candidate
/// set: the vector index's neighbours when there is no corpus-wide keyword index).
pub fn score_texts(query: &str, texts: &[&str]) -> Vec<f32> {
    let mut q = terms(query);
    q.sort();
    q.dedup();
    let docs: Vec<(TermCounts, u32)> = texts.iter().map(|t| frequencies(t)).collect();
    let n = docs.len().max(1) as f32;
    let average = docs.iter().map(|d| d.1 as f32).sum::<f32>() / n;
    let idfs: Vec<f32> = q
        .iter()
        .map(|t| {
            idf(
                n,
                docs.iter().filter(|d| d.0.contains_key(t)).count() as f32,
            )
        })
        .collect();
    docs.iter()
        .map(|(tf, len)| {
            q.iter()
                .zip(&idfs)
                .filter_map(|(t, idf)| {
                    tf.get(t)
                        .map(|f| term_score(*idf, *f as f32, *len as f32, average))
                })
                .sum()
        })
        .collect()
}

/// The largest share of the query's term weight (idf among `texts`) that one text holds:
/// 1 when a text has every distinctive term of the question, 0 when none has any.
pub fn best_share(query: &str, texts: &[&str]) -> f32 {
    let mut q = terms(query);
    q.sort();
    q.dedup();
    let docs: Vec<TermCounts> = texts.iter().map(|t| frequencies(t).0).collect();
    let n = docs.len().max(1) as f32;
    let idfs: Vec<f32> = q
        .iter()
        .map(|t| idf(n, docs.iter().filter(|d| d.contains_key(t)).count() as f32))
        .collect();
    let total: f32 = idfs.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    docs.iter()
        .map(|d| {
            q.iter()
                .zip(&idfs)
                .filter(|(t, _)| d.contains_key(*t))
                .map(|(_, w)| w)
                .sum::<f32>()
                / total
        })
        .fold(0.0, f32::max)
}

/// What the index keeps of one chunk's text: its term frequencies and length in terms, and a
/// digest that tells a re-indexed chunk whose text did not change (a metadata refresh) from
/// one whose text did. Computed outside the index's lock: it is the expensive part.
pub struct Terms {
    frequencies: TermCounts,
    length: u32,
    digest: u64,
}

impl Terms {
    pub fn of(text: &str) -> Terms {
        let (frequencies, length) = frequencies(text);
        Terms {
            frequencies,
            length,
            digest: digest(text),
        }
    }
}

/// A 64-bit digest of a chunk's text: equal texts, equal digests; a collision only keeps the
/// old terms of one chunk until its text changes again.
pub fn digest(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(text)
}

/// One indexed chunk: its key, length in terms, number of distinct terms (its postings) and
/// the digest of its text.
struct Slot {
    key: String,
    length: u32,
    distinct: u32,
    digest: u64,
}

/// An inverted index over chunk texts, for BM25 over a whole corpus: each query reads only
/// the posting lists of its own terms. Removed chunks leave dead postings behind, skipped
/// while scoring and dropped once they outnumber the live ones.
#[derive(Default)]
pub struct Bm25Index {
    /// `None` once removed.
    slots: Vec<Option<Slot>>,
    slot_of: HashMap<String, u32>,
    postings: HashMap<String, Vec<(u32, u32)>>,
    total_length: u64,
    live_postings: usize,
    dead_postings: usize,
}

impl Bm25Index {
    pub fn len(&self) -> usize {
        self.slot_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slot_of.is_empty()
    }

    /// Indexes (or re-indexes) the chunk `key`.
    pub fn upsert(&mut self, key: &str, text: &str) {
        self.upsert_terms(key, Terms::of(text));
    }

    /// Whether the chunk `key` is indexed with a text of this digest (nothing to redo).
    pub fn holds(&self, key: &str, digest: u64) -> bool {
        self.slot_of.get(key).is_some_and(|&slot| {
            self.slots[slot as usize]
                .as_ref()
                .is_some_and(|s| s.digest == digest)
        })
    }

    /// Indexes (or re-indexes) the chunk `key` with terms computed beforehand.
    pub fn upsert_terms(&mut self, key: &str, terms: Terms) {
        self.remove(key);
        let slot = self.slots.len() as u32;
        self.slots.push(Some(Slot {
            key: key.to_string(),
            length: terms.length,
            distinct: terms.frequencies.len() as u32,
            digest: terms.digest,
        }));
        self.slot_of.insert(key.to_string(), slot);
        self.total_length += terms.length as u64;
        self.live_postings += terms.frequencies.len();
        for (term, f) in terms.frequencies {
            self.postings.entry(term).or_default().push((slot, f));
        }
    }

    pub fn remove(&mut self, key: &str) {
        let Some(slot) = self.slot_of.remove(key) else {
            return;
        };
        if let Some(s) = self.slots[slot as usize].take() {
            self.total_length -= s.length as u64;
            self.live_postings -= s.distinct as usize;
            self.dead_postings += s.distinct as usize;
        }
        if self.dead_postings > self.live_postings.max(1024) {
            self.compact();
        }
    }

    /// Drops dead postings and renumbers the live slots densely.
    fn compact(&mut self) {
        let mut renumber = vec![u32::MAX; self.slots.len()];
        let mut slots = Vec::with_capacity(self.slot_of.len());
        for (old, entry) in self.slots.drain(..).enumerate() {
            if let Some(e) = entry {
                renumber[old] = slots.len() as u32;
                slots.push(Some(e));
            }
        }
        self.slots = slots;
        for (key, slot) in self.slot_of.iter_mut() {
            *slot = renumber[*slot as usize];
            debug_assert!(
                self.slots[*slot as usize]
                    .as_ref()
                    .is_some_and(|e| &e.key == key)
            );
        }
        let mut live = 0;
        self.postings.retain(|_, list| {
            list.retain_mut(|(slot, _)| {
                let new = renumber[*slot as usize];
                *slot = new;
                new != u32::MAX
            });
            live += list.len();
            !list.is_empty()
        });
        self.live_postings = live;
        self.dead_postings = 0;
    }

    /// The `top_k` keys with the highest BM25 for `query` among the chunks `accept` lets
    /// through (the metadata filter), best first; chunks sharing no term are left out.
    pub fn search(
        &self,
        query: &str,
        top_k: usize,
        mut accept: impl FnMut(&str) -> bool,
    ) -> Vec<(String, f32)> {
        let mut q = terms(query);
        q.sort();
        q.dedup();
        let n = self.slot_of.len() as f32;
        if n == 0.0 || top_k == 0 {
            return Vec::new();
        }
        let average = self.total_length as f32 / n;
        // Dense per-slot state rather than hash maps: a common term's postings reach most of
        // the archive (100k chunks), where hashing every slot twice was most of the query.
        const UNSEEN: u8 = 0;
        const ACCEPTED: u8 = 1;
        const REFUSED: u8 = 2;
        let mut state = vec![UNSEEN; self.slots.len()];
        let mut score = vec![0.0f32; self.slots.len()];
        let mut scored: Vec<u32> = Vec::new();
        for term in &q {
            let Some(list) = self.postings.get(term) else {
                continue;
            };
            // Document frequency over live chunks of the whole corpus (not only the filtered).
            let live = list
                .iter()
                .filter(|(slot, _)| self.slots[*slot as usize].is_some())
                .count();
            let idf = idf(n, live as f32);
            for &(slot, f) in list {
                let Some(s) = self.slots[slot as usize].as_ref() else {
                    continue;
                };
                let i = slot as usize;
                if state[i] == UNSEEN {
                    state[i] = if accept(&s.key) {
                        scored.push(slot);
                        ACCEPTED
                    } else {
                        REFUSED
                    };
                }
                if state[i] == ACCEPTED {
                    score[i] += term_score(idf, f as f32, s.length as f32, average);
                }
            }
        }
        let key = |slot: u32| &self.slots[slot as usize].as_ref().expect("live slot").key;
        // Equal scores are common (one shared term, equal lengths): broken by key, not by slot,
        // whose order is the order concurrent workers happened to index in, so the same
        // question over the same archive always gets the same passages. A total order, so the
        // top `top_k` are selected without sorting every scored chunk.
        let order = |a: &u32, b: &u32| {
            score[*b as usize]
                .total_cmp(&score[*a as usize])
                .then_with(|| key(*a).cmp(key(*b)))
        };
        if scored.len() > top_k {
            scored.select_nth_unstable_by(top_k - 1, order);
            scored.truncate(top_k);
        }
        scored.sort_by(order);
        scored
            .into_iter()
            .map(|slot| (key(slot).clone(), score[slot as usize]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_k_are_the_first_k_of_the_whole_ranking() {
        let mut index = Bm25Index::default();
        for i in 0..300 {
            let text = format!(
                "fence {} gate {} paint",
                "repair ".repeat(i % 7),
                "oak ".repeat(i % 3)
            );
            index.upsert(&format!("k{i:03}"), &text);
        }
        let whole = index.search("fence repair oak", 300, |k| !k.ends_with('5'));
        assert_eq!(whole.len(), 270);
        for top_k in [1, 10, 40, 269, 270, 500] {
            let top = index.search("fence repair oak", top_k, |k| !k.ends_with('5'));
            assert_eq!(top, whole[..top_k.min(270)], "top {top_k}");
        }
    }

    #[test]
    fn equal_scores_rank_by_key_whatever_order_the_chunks_were_indexed_in() {
        let chunks = [
            ("c", "fence repair"),
            ("a", "fence paint"),
            ("b", "fence gate"),
        ];
        let mut forward = Bm25Index::default();
        let mut backward = Bm25Index::default();
        for (key, text) in chunks {
            forward.upsert(key, text);
        }
        for (key, text) in chunks.iter().rev() {
            backward.upsert(key, text);
        }
        let top = |index: &Bm25Index| -> Vec<String> {
            index
                .search("fence", 2, |_| true)
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        assert_eq!(top(&forward), ["a", "b"]);
        assert_eq!(top(&backward), ["a", "b"]);
    }

    #[test]
    fn terms_drop_function_words_of_three_languages_and_share_stems() {
        assert_eq!(
            terms("J'ai payé l'hôtel dans la ville"),
            ["paye", "hotel", "vill"]
        );
        assert_eq!(terms("Die Rechnungen"), terms("der Rechnung"));
        assert_eq!(terms("invoices"), terms("invoice"));
        assert!(terms("what is the and of it").is_empty());
    }

    #[test]
    fn bm25_prefers_rare_terms_and_ignores_unrelated_texts() {
        let texts = [
            "Rechnung Nr. BH-24-0962 Durchlauferhitzer Austausch",
            "Rechnung Wartung Heizung",
            "Rechnung Strom Jahresabrechnung",
        ];
        let s = score_texts("Rechnung Durchlauferhitzer", &texts);
        assert!(s[0] > s[1] && s[0] > s[2], "{s:?}");
        assert_eq!(score_texts("Kaution", &texts), [0.0, 0.0, 0.0]);
    }

    #[test]
    fn the_index_ranks_like_candidate_scoring_and_forgets_removed_chunks() {
        let mut index = Bm25Index::default();
        index.upsert("a", "Kaution 4.260 Euro Mietvertrag");
        index.upsert("b", "Mietvertrag Leonrodstrasse Miete");
        index.upsert("c", "Gehaltsabrechnung Dezember");
        let hits = index.search("Kaution Mietvertrag", 10, |_| true);
        assert_eq!(hits[0].0, "a");
        assert_eq!(hits.len(), 2, "c shares no term");
        let filtered = index.search("Kaution Mietvertrag", 10, |k| k != "a");
        assert_eq!(
            filtered.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        index.remove("a");
        index.upsert("b", "Gehalt");
        assert!(index.search("Kaution Mietvertrag", 10, |_| true).is_empty());
        for i in 0..3000 {
            index.upsert(&format!("k{}", i % 7), &format!("word{i} Kaution"));
        }
        assert_eq!(index.len(), 9);
        let hits = index.search("Kaution", 100, |_| true);
        assert_eq!(hits.len(), 7, "only live chunks, after compaction");
    }
}
