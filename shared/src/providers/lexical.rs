//! `lexical`: the provider that needs no model and no network. Embeddings are hashed word and
//! character n-grams; tagging matches the existing taxonomy by name and by Paperless's own match
//! words and reads dates from the text; answers are the best-matching sentences, cited. It keeps
//! `pai` useful offline, keeps tests deterministic, and never invents a value it cannot see.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::domain::{Answer, AnswerInput, ObjectKind, Suggestion, TagInput, TaxonomyObject};
use crate::keyword::terms;
use crate::ports::{ChatModel, Embedder, ModelError, Usage};
use crate::text::{detect_language, find_dates, fold, is_stopword, words};

/// Default dimension of lexical vectors: large enough to keep hash collisions rare in one
/// document's vocabulary, small enough for exact search over 10⁵ chunks in milliseconds.
pub const DEFAULT_DIMENSION: usize = 256;

pub struct LexicalEmbedder {
    dimension: usize,
    space: String,
}

impl LexicalEmbedder {
    pub fn new(dimension: usize) -> LexicalEmbedder {
        LexicalEmbedder {
            dimension,
            space: super::names::space("lexical", "hash-ngram", dimension, None),
        }
    }

    /// The embedding of one text (unit length, or all zeros for a text without words).
    pub fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimension];
        let ws: Vec<String> = words(text)
            .into_iter()
            .filter(|w| !is_stopword(w))
            .collect();
        let mut add = |feature: &str, weight: f32| {
            let h = fnv1a(feature.as_bytes());
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            v[(h % self.dimension as u64) as usize] += sign * weight;
        };
        for (i, w) in ws.iter().enumerate() {
            add(w, 1.0);
            if let Some(next) = ws.get(i + 1) {
                add(&format!("{w} {next}"), 0.5);
            }
            // Character trigrams tie together inflections and compounds ("Rechnung", "Rechnungen").
            let chars: Vec<char> = format!("^{w}$").chars().collect();
            for tri in chars.windows(3) {
                add(&tri.iter().collect::<String>(), 0.25);
            }
        }
        // Sublinear term frequency: one repeated word should not dominate a chunk.
        for x in v.iter_mut() {
            *x = x.signum() * (1.0 + x.abs()).ln();
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[async_trait]
impl Embedder for LexicalEmbedder {
    fn space(&self) -> &str {
        &self.space
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, Usage), ModelError> {
        Ok((
            texts.iter().map(|t| self.vector(t)).collect(),
            Usage::default(),
        ))
    }

    /// Hashed n-grams are symmetric: a query is embedded like a document.
    async fn embed_query(&self, text: &str) -> Result<(Vec<f32>, Usage), ModelError> {
        Ok((self.vector(text), Usage::default()))
    }
}

/// Tagging and answering without a model. With an embedder (a real embedding model next to
/// the offline answerer), answers choose sentences by meaning as well as by words.
#[derive(Default, Clone)]
pub struct LexicalModel {
    embedder: Option<Arc<dyn Embedder>>,
}

impl LexicalModel {
    pub fn with_embedder(embedder: Arc<dyn Embedder>) -> LexicalModel {
        LexicalModel {
            embedder: Some(embedder),
        }
    }
}

/// Where a taxonomy object first shows up in the document, and how often.
fn find_object(text_words: &[String], object: &TaxonomyObject) -> Option<(usize, usize)> {
    let mut needles: Vec<Vec<String>> = vec![words(&object.name)];
    // Paperless matching algorithms: 1 any word, 2 all words, 3 literal; others: name only.
    match object.matching_algorithm {
        1 => needles.extend(
            words(&object.match_words)
                .into_iter()
                .filter(|w| w.len() > 2)
                .map(|w| vec![w]),
        ),
        2 => {
            let all = words(&object.match_words);
            if !all.is_empty() && all.iter().all(|w| text_words.contains(w)) {
                needles.push(all[..1].to_vec());
            }
        }
        3 => needles.push(words(&object.match_words)),
        _ => {}
    }
    let mut first: Option<usize> = None;
    let mut count = 0;
    for needle in needles.iter().filter(|n| !n.is_empty()) {
        for (i, window) in text_words.windows(needle.len()).enumerate() {
            if window == needle.as_slice() {
                count += 1;
                first = Some(first.map_or(i, |f| f.min(i)));
            }
        }
    }
    first.map(|f| (f, count))
}

fn allowed(input: &TagInput, kind: ObjectKind) -> impl Iterator<Item = &TaxonomyObject> {
    let names = match kind {
        ObjectKind::Tag => &input.tags,
        ObjectKind::Correspondent => &input.correspondents,
        ObjectKind::DocumentType => &input.document_types,
    };
    let names: Vec<String> = names.iter().map(|n| fold(n)).collect();
    input
        .taxonomy
        .objects(kind)
        .iter()
        .filter(move |o| names.contains(&fold(&o.name)))
}

impl LexicalModel {
    fn suggestion(input: &TagInput) -> Suggestion {
        let text_words = words(&input.content);
        let best = |kind: ObjectKind, by_position: bool| {
            allowed(input, kind)
                .filter_map(|o| find_object(&text_words, o).map(|(first, count)| (o, first, count)))
                .min_by_key(|(o, first, count)| {
                    if by_position {
                        (*first, usize::MAX - count, o.id)
                    } else {
                        (usize::MAX - count, *first, o.id)
                    }
                })
                .map(|(o, _, _)| o.name.clone())
        };
        // The sender is named first (letterhead); the kind of document is what it says most.
        let correspondent = best(ObjectKind::Correspondent, true);
        let document_type = best(ObjectKind::DocumentType, false);
        let mut tags: Vec<String> = allowed(input, ObjectKind::Tag)
            .filter(|o| find_object(&text_words, o).is_some())
            .map(|o| o.name.clone())
            .collect();
        tags.sort();
        let today = NaiveDate::parse_from_str(&input.today, "%Y-%m-%d").unwrap_or(NaiveDate::MAX);
        let created = find_dates(&input.content, today)
            .first()
            .map(|d| d.to_string());
        let first_line = input
            .content
            .lines()
            .map(str::trim)
            .find(|l| l.chars().filter(|c| c.is_alphabetic()).count() >= 3)
            .map(|l| l.chars().take(60).collect::<String>());
        let subject = correspondent.clone().or(first_line);
        let title = match (&document_type, &subject) {
            (Some(t), Some(s)) => Some(format!("{t} {s}")),
            (Some(t), None) => Some(t.clone()),
            (None, Some(s)) => Some(s.clone()),
            (None, None) => None,
        }
        .map(|t| match &created {
            Some(d) => format!("{t} {}", &d[..7]),
            None => t,
        });
        Suggestion {
            title,
            tags,
            correspondent,
            document_type,
            created,
            custom_fields: Default::default(),
            storage_path: None,
        }
    }

    /// The passages' sentences that answer the question best, cited. A sentence is chosen by
    /// its similarity to the question: the embedder's (when one is configured, so a German
    /// sentence can answer an English question), shared word stems, and shared character
    /// trigrams (inflections, compounds: "Erhitzer" in "Durchlauferhitzer"), with a bonus
    /// for holding what the question asks for (an amount, a date, a number) and for coming
    /// from a better-ranked passage. Never empty while there are passages.
    async fn extract(&self, input: &AnswerInput) -> Answer {
        let question_terms = terms(&input.question);
        let question_grams = trigrams(&question_terms);
        let wants = wanted(&input.question);
        let mut found: Vec<(usize, String)> = Vec::new();
        for p in &input.passages {
            for sentence in sentences(&p.text) {
                if !found.iter().any(|(_, s)| fold(s) == fold(&sentence)) {
                    found.push((p.n, sentence));
                }
            }
        }
        if found.is_empty() {
            // Passages without a full sentence (a table, a receipt): quote the best one.
            let Some(p) = input.passages.first() else {
                return Answer {
                    text: String::new(),
                    cited: vec![],
                };
            };
            let quote: String = p.text.split_whitespace().collect::<Vec<_>>().join(" ");
            found.push((p.n, quote.chars().take(300).collect()));
        }
        found.truncate(MAX_SENTENCES);
        let semantic = self.similarities(&input.question, &found).await;
        let mut scored: Vec<(f32, usize, String)> = found
            .into_iter()
            .enumerate()
            .map(|(i, (n, sentence))| {
                let sentence_terms = terms(&sentence);
                let shared = question_terms
                    .iter()
                    .filter(|t| sentence_terms.contains(t))
                    .count() as f32
                    / question_terms.len().max(1) as f32;
                let grams = dice(&question_grams, &trigrams(&sentence_terms));
                let lexical = 0.6 * shared + 0.4 * grams;
                let meaning = semantic.as_ref().map(|s| s[i]);
                let relevance = match meaning {
                    Some(m) => 0.6 * m + 0.4 * lexical,
                    None => lexical,
                };
                let fits = wants.iter().any(|w| w.found_in(&sentence)) as u8 as f32;
                let score =
                    relevance + 0.25 * fits + 0.05 / n as f32 - sentence.len() as f32 / 4000.0;
                (score, n, sentence)
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // Only sentences nearly as good as the best: a weak runner-up is noise, not support.
        let best = scored.first().map(|s| s.0).unwrap_or(0.0);
        let picked: Vec<(usize, String)> = scored
            .into_iter()
            .enumerate()
            .filter(|(i, (score, _, _))| *i == 0 || *score >= best * 0.8)
            .take(3)
            .map(|(_, (_, n, s))| (n, s))
            .collect();
        let lead = match detect_language(&input.question) {
            "de" => "Laut Ihren Dokumenten:",
            "fr" => "D'après vos documents :",
            _ => "From your documents:",
        };
        let mut text = lead.to_string();
        let mut cited = Vec::new();
        for (n, s) in picked {
            text.push_str(&format!("\n- {s} [{n}]"));
            if !cited.contains(&n) {
                cited.push(n);
            }
        }
        Answer { text, cited }
    }

    /// Each sentence's similarity to the question by the configured embedder, rescaled to
    /// 0..1 across the sentences (embedding spaces differ in where their cosines sit); `None`
    /// without an embedder or when it fails (the words still choose).
    async fn similarities(&self, question: &str, found: &[(usize, String)]) -> Option<Vec<f32>> {
        let embedder = self.embedder.as_ref()?;
        let (q, _) = embedder.embed_query(question).await.ok()?;
        // The sentences of the best passages only: a model call per answer stays small.
        let weighed = found
            .iter()
            .filter(|(n, _)| *n <= SEMANTIC_PASSAGES)
            .count();
        let texts: Vec<String> = found[..weighed].iter().map(|(_, s)| s.clone()).collect();
        let (vectors, _) = embedder.embed(&texts).await.ok()?;
        let cos: Vec<f32> = vectors
            .iter()
            .map(|v| {
                let dot: f32 = q.iter().zip(v).map(|(a, b)| a * b).sum();
                let norm = q.iter().map(|x| x * x).sum::<f32>().sqrt()
                    * v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 { dot / norm } else { 0.0 }
            })
            .collect();
        let (lo, hi) = cos
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), c| (lo.min(*c), hi.max(*c)));
        let mut scaled: Vec<f32> = cos
            .iter()
            .map(|c| if hi > lo { (c - lo) / (hi - lo) } else { 0.0 })
            .collect();
        scaled.resize(found.len(), 0.0);
        Some(scaled)
    }
}

/// At most this many sentences are weighed for one answer (six passages' worth).
const MAX_SENTENCES: usize = 160;
/// Sentences of the passages numbered up to this are also weighed by the embedder: all that
/// chat hands over (six), since with other words or another language the answer is often in
/// a passage the keywords ranked low.
const SEMANTIC_PASSAGES: usize = 6;

/// Character trigrams of the terms, each padded so word starts and ends count.
fn trigrams(terms: &[String]) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for t in terms.iter().filter(|t| t.chars().count() > 3) {
        let chars: Vec<char> = format!("^{t}$").chars().collect();
        for w in chars.windows(3) {
            out.insert(w.iter().collect());
        }
    }
    out
}

/// How much of the question's trigrams the sentence shares (0..1).
fn dice(
    question: &std::collections::HashSet<String>,
    sentence: &std::collections::HashSet<String>,
) -> f32 {
    if question.is_empty() {
        return 0.0;
    }
    question.intersection(sentence).count() as f32 / question.len() as f32
}

/// What kind of value a question asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Wanted {
    Amount,
    Date,
    Number,
}

impl Wanted {
    fn found_in(self, sentence: &str) -> bool {
        let digits = sentence.chars().filter(char::is_ascii_digit).count();
        match self {
            Wanted::Amount => {
                digits >= 2
                    && (sentence.contains(['€', '£', '$', '%'])
                        || ["eur", "gbp", "usd", "chf"]
                            .iter()
                            .any(|c| words(sentence).iter().any(|w| w == c)))
            }
            Wanted::Date => {
                !find_dates(sentence, NaiveDate::MAX).is_empty()
                    || words(sentence).iter().any(|w| MONTHS.contains(&w.as_str()))
            }
            Wanted::Number => digits >= 1,
        }
    }
}

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "januar",
    "februar",
    "marz",
    "mai",
    "juni",
    "juli",
    "oktober",
    "dezember",
    "janvier",
    "fevrier",
    "mars",
    "avril",
    "juin",
    "juillet",
    "aout",
    "septembre",
    "octobre",
    "novembre",
    "decembre",
];

/// The kinds of value the question's wording asks for, in English, German and French.
fn wanted(question: &str) -> Vec<Wanted> {
    let w = words(question);
    let has = |xs: &[&str]| w.iter().any(|x| xs.contains(&x.as_str()));
    let pair = |a: &str, b: &[&str]| {
        w.windows(2)
            .any(|p| p[0] == a && b.contains(&p[1].as_str()))
    };
    let mut out = Vec::new();
    if pair("how", &["much"])
        || pair("wie", &["viel", "hoch", "teuer"])
        || has(&[
            "cost", "costs", "price", "pay", "paid", "spend", "spent", "charge", "charged",
            "amount", "total", "premium", "fee", "refund", "kostet", "kostete", "gekostet",
            "betrag", "summe", "preis", "beitrag", "bezahlt", "combien", "coute", "montant",
            "prix", "paye", "total",
        ])
    {
        out.push(Wanted::Amount);
    }
    if has(&[
        "when", "wann", "quand", "date", "datum", "until", "bis", "ab", "since", "seit",
    ]) {
        out.push(Wanted::Date);
    }
    if pair("how", &["many", "long", "often"])
        || pair("wie", &["viele", "lange", "oft"])
        || has(&["number", "nummer", "numero", "anzahl"])
    {
        out.push(Wanted::Number);
    }
    out
}

/// Lines of a passage with wrapped lines joined: a line that does not end a sentence,
/// followed by one that starts in lower case, is one line broken by the layout (a table cell
/// "private room" / "with a surcharge of €80 per night").
fn unwrapped_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let next = line.trim();
        let continues = next.starts_with(|c: char| c.is_lowercase())
            && lines.last().is_some_and(|prev| {
                let prev = prev.trim_end();
                !prev.is_empty() && !prev.ends_with(['.', '!', '?', ':'])
            });
        match lines.last_mut() {
            Some(prev) if continues => {
                prev.truncate(prev.trim_end().len());
                prev.push(' ');
                prev.push_str(next);
            }
            _ => lines.push(line.to_string()),
        }
    }
    lines
}

/// Sentences and lines of a passage, trimmed, without fragments too short to say anything.
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in &unwrapped_lines(text) {
        let line = line.as_str();
        let mut start = 0;
        let bytes = line.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let end_of_sentence = matches!(b, b'.' | b'!' | b'?')
                && bytes.get(i + 1).is_none_or(|n| *n == b' ')
                && !line[..i].ends_with(|c: char| c.is_ascii_digit());
            if end_of_sentence {
                out.push(line[start..=i].trim().to_string());
                start = i + 1;
            }
        }
        out.push(line[start..].trim().to_string());
    }
    out.retain(|s| s.chars().filter(|c| c.is_alphanumeric()).count() >= 15);
    out
}

#[async_trait]
impl ChatModel for LexicalModel {
    fn name(&self) -> &str {
        "lexical"
    }

    fn judges_passages(&self) -> bool {
        false
    }

    async fn suggest(&self, input: &TagInput) -> Result<(Suggestion, Usage), ModelError> {
        Ok((Self::suggestion(input), Usage::default()))
    }

    async fn answer(&self, input: &AnswerInput) -> Result<(Answer, Usage), ModelError> {
        Ok((self.extract(input).await, Usage::default()))
    }

    async fn standalone(
        &self,
        history: &[(String, String)],
        question: &str,
    ) -> Result<(String, Usage), ModelError> {
        // A short follow-up borrows the words of the question before it.
        let content = words(question)
            .into_iter()
            .filter(|w| !is_stopword(w))
            .count();
        let standalone = match history.last() {
            Some((previous, _)) if content < 4 => format!("{previous} {question}"),
            _ => question.to_string(),
        };
        Ok((standalone, Usage::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DocId, Field, Passage, Taxonomy};

    fn obj(id: u64, name: &str, m: &str) -> TaxonomyObject {
        TaxonomyObject {
            id,
            name: name.into(),
            match_words: m.into(),
            matching_algorithm: 1,
            document_count: 0,
        }
    }

    fn input(content: &str) -> TagInput {
        let taxonomy = Taxonomy {
            tags: vec![
                obj(1, "Invoice", "rechnung facture"),
                obj(2, "Insurance", "versicherung"),
                obj(3, "Tax", "steuer"),
            ],
            correspondents: vec![
                obj(1, "Berger Haustechnik GmbH", "berger"),
                obj(2, "Stadtwerke München", ""),
            ],
            document_types: vec![obj(1, "Invoice", "rechnung"), obj(2, "Letter", "")],
            custom_fields: vec![],
            storage_paths: vec![],
        };
        TagInput {
            current_title: "scan_0001".into(),
            content: content.into(),
            fields: vec![
                Field::Title,
                Field::Tags,
                Field::Correspondent,
                Field::DocumentType,
                Field::Created,
            ],
            tags: taxonomy.tags.iter().map(|o| o.name.clone()).collect(),
            correspondents: taxonomy
                .correspondents
                .iter()
                .map(|o| o.name.clone())
                .collect(),
            document_types: taxonomy
                .document_types
                .iter()
                .map(|o| o.name.clone())
                .collect(),
            custom_fields: vec![],
            storage_paths: vec![],
            restrict_tags: true,
            restrict_correspondents: true,
            restrict_document_types: true,
            taxonomy,
            today: "2026-01-01".into(),
        }
    }

    #[tokio::test]
    async fn matches_taxonomy_by_name_and_match_words_across_accents() {
        let (s, _) = LexicalModel::default().suggest(&input("STADTWERKE MUENCHEN\nStadtwerke Munchen GmbH\nRechnung Nr. 4711\nDatum: 14.03.2025\nBerger is mentioned later.")).await.unwrap();
        assert_eq!(s.correspondent.as_deref(), Some("Stadtwerke München"));
        assert_eq!(s.document_type.as_deref(), Some("Invoice"));
        assert_eq!(s.tags, vec!["Invoice"]);
        assert_eq!(s.created.as_deref(), Some("2025-03-14"));
        assert_eq!(
            s.title.as_deref(),
            Some("Invoice Stadtwerke München 2025-03")
        );
    }

    #[tokio::test]
    async fn never_invents_a_date_or_an_object() {
        let (s, _) = LexicalModel::default()
            .suggest(&input(
                "a note without any known name, dated 31.02.2025 and 01.01.2099",
            ))
            .await
            .unwrap();
        assert_eq!(s.created, None);
        assert_eq!(s.correspondent, None);
        assert!(s.tags.is_empty());
    }

    #[test]
    fn wrapped_table_lines_are_one_sentence() {
        let text = "Hospital accommodation     semi-private room; private room\n       with a surcharge of €80 per night\nDental treatment 80%\nNext line.\nlower case after a full stop";
        let got = sentences(text);
        assert!(
            got.iter()
                .any(|s| s.contains("private room with a surcharge of €80")),
            "{got:?}"
        );
        assert!(
            got.iter().any(|s| s == "lower case after a full stop"),
            "{got:?}"
        );
    }

    #[test]
    fn similar_texts_embed_closer_than_unrelated_ones() {
        let e = LexicalEmbedder::new(DEFAULT_DIMENSION);
        let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        let a = e.vector("Invoice for plumbing work, boiler repair");
        let b = e.vector("plumber invoice: repair of the boiler");
        let c = e.vector("Lab report: blood count and cholesterol");
        assert!(cos(&a, &b) > cos(&a, &c) + 0.2);
        assert_eq!(
            e.vector("Rechnung"),
            e.vector("rechnung"),
            "deterministic and case-folded"
        );
        assert!(e.vector("the and of").iter().all(|x| *x == 0.0));
    }

    #[tokio::test]
    async fn the_answer_follows_the_language_of_the_question() {
        let passages = vec![Passage {
            n: 1,
            doc_id: DocId::Paperless(1),
            title: "Mietvertrag".into(),
            text: "Der Mieter leistet eine Kaution von 4.260,00 €.".into(),
        }];
        let (a, _) = LexicalModel::default()
            .answer(&AnswerInput {
                question: "Wie hoch ist die Kaution des Mieters?".into(),
                passages,
                history: vec![],
            })
            .await
            .unwrap();
        assert!(
            a.text.starts_with("Laut Ihren Dokumenten:")
                && a.text.contains("Kaution von 4.260,00 €. [1]"),
            "{}",
            a.text
        );
    }

    #[tokio::test]
    async fn answers_cite_the_passage_they_quote() {
        let passages = vec![
            Passage {
                n: 1,
                doc_id: DocId::Paperless(1),
                title: "a".into(),
                text: "The weather was fine. Nothing else.".into(),
            },
            Passage {
                n: 2,
                doc_id: DocId::Paperless(2),
                title: "b".into(),
                text: "Total amount due for the boiler repair: EUR 1,250.00.".into(),
            },
        ];
        let (a, _) = LexicalModel::default()
            .answer(&AnswerInput {
                question: "What was the total for the boiler repair?".into(),
                passages,
                history: vec![],
            })
            .await
            .unwrap();
        assert_eq!(a.cited, vec![2]);
        assert!(
            a.text.contains("1,250.00") && a.text.contains("[2]"),
            "{}",
            a.text
        );
    }
}
