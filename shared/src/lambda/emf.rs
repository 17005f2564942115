//! Metrics on Lambda as CloudWatch Embedded Metric Format: JSON lines on stdout that CloudWatch
//! turns into metrics, with no agent, no API call and no added latency. The instrumented code
//! records through the same `metrics` facade `pai` serves as Prometheus.
//!
//! Every metric has one dimension, `Function`; its labels (provider, kind, cache…) travel as
//! properties, searchable in Logs Insights without multiplying the metrics billed. A function
//! flushes after each invocation, so nothing waits in memory across a freeze.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use serde_json::{Map, Value, json};

/// The CloudWatch namespace of every metric (the template's alarms and dashboard use it).
pub const NAMESPACE: &str = "PaperlessAi";
/// EMF takes at most 100 values per metric in one line.
const MAX_VALUES: usize = 100;

#[derive(Default)]
struct CounterCell(AtomicU64);

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct GaugeCell(Mutex<Option<f64>>);

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        let mut v = self.0.lock().expect("gauge");
        *v = Some(v.unwrap_or(0.0) + value);
    }
    fn decrement(&self, value: f64) {
        self.increment(-value);
    }
    fn set(&self, value: f64) {
        *self.0.lock().expect("gauge") = Some(value);
    }
}

#[derive(Default)]
struct HistogramCell(Mutex<Vec<f64>>);

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.0.lock().expect("histogram").push(value);
    }
}

/// What the recorder has seen since the last flush.
pub struct Registry {
    function: &'static str,
    units: Mutex<HashMap<String, Unit>>,
    counters: Mutex<HashMap<Key, Arc<CounterCell>>>,
    gauges: Mutex<HashMap<Key, Arc<GaugeCell>>>,
    histograms: Mutex<HashMap<Key, Arc<HistogramCell>>>,
}

/// The `metrics` recorder writing into a shared `Registry`.
#[derive(Clone)]
pub struct EmfRecorder(Arc<Registry>);

type Labels = Vec<(String, String)>;
/// One metric of a label set: name, EMF unit, values.
type Series = (String, &'static str, Vec<f64>);

impl Registry {
    pub fn new(function: &'static str) -> Registry {
        Registry {
            function,
            units: Mutex::default(),
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
        }
    }

    fn unit(&self, name: &str, default: &'static str) -> &'static str {
        match self.units.lock().expect("units").get(name) {
            Some(Unit::Seconds) => "Seconds",
            Some(Unit::Milliseconds) => "Milliseconds",
            Some(Unit::Microseconds) => "Microseconds",
            Some(Unit::Bytes) => "Bytes",
            Some(Unit::Percent) => "Percent",
            Some(Unit::Count) => "Count",
            Some(_) => "None",
            None => default,
        }
    }

    /// The EMF lines for everything recorded since the last call, which it resets (counters
    /// report their increase, histograms their samples; gauges keep their value).
    pub fn render(&self, timestamp_ms: i64) -> Vec<String> {
        let labels = |key: &Key| -> Labels {
            let mut l: Labels = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            l.sort();
            l
        };
        // Per label set: (metric name, unit, values).
        let mut groups: BTreeMap<Labels, Vec<Series>> = BTreeMap::new();
        for (key, cell) in self.counters.lock().expect("counters").iter() {
            let n = cell.0.swap(0, Ordering::Relaxed);
            if n > 0 {
                let unit = self.unit(key.name(), "Count");
                groups.entry(labels(key)).or_default().push((
                    key.name().to_string(),
                    unit,
                    vec![n as f64],
                ));
            }
        }
        for (key, cell) in self.gauges.lock().expect("gauges").iter() {
            let mut value = cell.0.lock().expect("gauge");
            // A float counter reports its increase since the last flush, like a counter.
            let reading = if crate::metrics::FLOAT_COUNTERS.contains(&key.name()) {
                value.take().filter(|v| *v != 0.0)
            } else {
                *value
            };
            if let Some(v) = reading {
                let unit = self.unit(key.name(), "None");
                groups.entry(labels(key)).or_default().push((
                    key.name().to_string(),
                    unit,
                    vec![v],
                ));
            }
        }
        for (key, cell) in self.histograms.lock().expect("histograms").iter() {
            let values = std::mem::take(&mut *cell.0.lock().expect("histogram"));
            if !values.is_empty() {
                let unit = self.unit(key.name(), "None");
                groups
                    .entry(labels(key))
                    .or_default()
                    .push((key.name().to_string(), unit, values));
            }
        }
        let mut lines = Vec::new();
        for (labels, mut metrics) in groups {
            metrics.sort_by(|a, b| a.0.cmp(&b.0));
            // A metric with more than 100 samples continues on further lines.
            let mut part = 0;
            loop {
                let slice: Vec<_> = metrics
                    .iter()
                    .filter_map(|(name, unit, values)| {
                        let chunk = values.chunks(MAX_VALUES).nth(part)?;
                        Some((name, *unit, chunk))
                    })
                    .collect();
                if slice.is_empty() {
                    break;
                }
                lines.push(self.line(timestamp_ms, &labels, &slice));
                part += 1;
            }
        }
        lines
    }

    fn line(
        &self,
        timestamp_ms: i64,
        labels: &Labels,
        metrics: &[(&String, &str, &[f64])],
    ) -> String {
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Function"]],
                    "Metrics": metrics
                        .iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        root.insert("Function".into(), json!(self.function));
        for (k, v) in labels {
            // A label never overwrites the envelope or the dimension.
            if k != "_aws" && k != "Function" {
                root.insert(k.clone(), json!(v));
            }
        }
        for (name, _, values) in metrics {
            let value = match values {
                [one] => json!(one),
                many => json!(many),
            };
            root.insert((*name).clone(), value);
        }
        Value::Object(root).to_string()
    }
}

impl EmfRecorder {
    pub fn new(registry: Arc<Registry>) -> EmfRecorder {
        EmfRecorder(registry)
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>) {
        if let Some(unit) = unit {
            self.0
                .units
                .lock()
                .expect("units")
                .insert(key.as_str().to_string(), unit);
        }
    }
}

impl Recorder for EmfRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe(key, unit);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut m = self.0.counters.lock().expect("counters");
        Counter::from_arc(m.entry(key.clone()).or_default().clone())
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut m = self.0.gauges.lock().expect("gauges");
        Gauge::from_arc(m.entry(key.clone()).or_default().clone())
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut m = self.0.histograms.lock().expect("histograms");
        Histogram::from_arc(m.entry(key.clone()).or_default().clone())
    }
}

static INSTALLED: OnceLock<Arc<Registry>> = OnceLock::new();

/// Installs the EMF recorder as the process's metrics recorder (once; later calls do nothing).
pub fn install(function: super::Function) {
    let registry = INSTALLED.get_or_init(|| Arc::new(Registry::new(function.name())));
    if metrics::set_global_recorder(EmfRecorder::new(registry.clone())).is_ok() {
        crate::metrics::describe();
    }
}

/// Writes what was recorded since the last flush to stdout, one EMF line per label set, and
/// exports the spans ended so far. Every door calls this at the end of an invocation, the
/// last moment the process surely runs (Lambda may freeze it right after the response).
pub fn flush() {
    // Blocks this thread, not the runtime's work: the exporter runs on a thread of its own.
    crate::telemetry::flush();
    let Some(registry) = INSTALLED.get() else {
        return;
    };
    let lines = registry.render(chrono::Utc::now().timestamp_millis());
    if lines.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    for line in lines {
        // stdout is the log stream; if it is gone there is nowhere to report that either.
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(registry: &Arc<Registry>, f: impl FnOnce()) {
        metrics::with_local_recorder(&EmfRecorder::new(registry.clone()), f);
    }

    #[test]
    fn one_line_per_label_set_with_the_function_dimension() {
        let registry = Arc::new(Registry::new("tag"));
        recorded(&registry, || {
            metrics::describe_histogram!("latency", Unit::Seconds, "");
            metrics::counter!("calls", "provider" => "bedrock").increment(2);
            metrics::counter!("calls", "provider" => "bedrock").increment(1);
            metrics::counter!("errors", "provider" => "bedrock").increment(1);
            metrics::histogram!("latency", "provider" => "bedrock").record(0.25);
            metrics::histogram!("latency", "provider" => "bedrock").record(0.5);
            metrics::counter!("calls", "provider" => "openai").increment(1);
        });
        let lines = registry.render(1_700_000_000_000);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let bedrock: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(bedrock["Function"], "tag");
        assert_eq!(bedrock["provider"], "bedrock");
        assert_eq!(bedrock["calls"], 3.0);
        assert_eq!(bedrock["errors"], 1.0);
        assert_eq!(bedrock["latency"], json!([0.25, 0.5]));
        let meta = &bedrock["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(meta["Namespace"], NAMESPACE);
        assert_eq!(meta["Dimensions"], json!([["Function"]]));
        assert_eq!(
            meta["Metrics"],
            json!([
                {"Name": "calls", "Unit": "Count"},
                {"Name": "errors", "Unit": "Count"},
                {"Name": "latency", "Unit": "Seconds"},
            ])
        );
        assert_eq!(bedrock["_aws"]["Timestamp"], 1_700_000_000_000i64);
    }

    #[test]
    fn a_flush_resets_counters_and_samples_and_splits_long_series() {
        let registry = Arc::new(Registry::new("embed"));
        recorded(&registry, || {
            metrics::counter!("calls").increment(1);
            for i in 0..250 {
                metrics::histogram!("latency").record(i as f64);
            }
        });
        let lines = registry.render(0);
        assert_eq!(lines.len(), 3, "250 samples take three lines");
        let sizes: Vec<usize> = lines
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["latency"].as_array().map_or(1, Vec::len)
            })
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert!(registry.render(0).is_empty(), "nothing new since the flush");
    }

    #[test]
    fn the_cost_reports_its_increase_per_flush_like_a_counter() {
        let registry = Arc::new(Registry::new("tag"));
        let cost = crate::metrics::MODEL_COST;
        recorded(&registry, || {
            metrics::gauge!(cost, "kind" => "tag").increment(0.0025);
            metrics::gauge!(cost, "kind" => "tag").increment(0.0005);
            metrics::gauge!("pai_queue_depth").set(3.0);
        });
        let lines = registry.render(0);
        let tag: Value = lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["kind"] == "tag")
            .unwrap();
        assert!((tag[cost].as_f64().unwrap() - 0.003).abs() < 1e-12, "{tag}");
        // The next flush: no new cost, so no cost value (a sum over flushes stays true);
        // an ordinary gauge keeps its value.
        recorded(&registry, || {
            metrics::gauge!(cost, "kind" => "tag").increment(0.001);
        });
        let lines = registry.render(0);
        let tag: Value = lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|v| v["kind"] == "tag")
            .unwrap();
        assert!((tag[cost].as_f64().unwrap() - 0.001).abs() < 1e-12, "{tag}");
        let lines = registry.render(0);
        assert!(lines.iter().all(|l| !l.contains(cost)), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.contains("pai_queue_depth")),
            "{lines:?}"
        );
    }
}
