//! Writing an exposition straight into one buffer, in the Prometheus text
//! format 0.0.4 or in OpenMetrics 1.0.0, from the same calls: no metric
//! objects are built per scrape.
//!
//! The two formats differ only in a family's header and the end:
//! - a counter's OpenMetrics family is named without `_total`, while its
//!   samples carry it (so a sample's name is the family table's name in
//!   both formats);
//! - OpenMetrics escapes `"` in HELP too, and ends with `# EOF`;
//! - label values are escaped the same way in both (`\\`, `\"`, `\n`), so a
//!   series' label text can be rendered once and reused for either.
//!
//! A family's header is written with its first sample: families without
//! samples are left out, as client libraries do.

use std::{
    borrow::Cow,
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
};

use super::families::{Family, Kind};

/// Which exposition format a scrape gets (see `openmetrics::preferred`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            // The crate-free spelling client_golang uses, with the charset.
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => super::openmetrics::CONTENT_TYPE,
        }
    }
}

/// One response body being written.
pub struct Exposition {
    format: Format,
    out: String,
}

impl Exposition {
    /// `capacity`: the expected size (the previous body's is a good guess).
    pub fn new(format: Format, capacity: usize) -> Self {
        Self::reusing(format, String::with_capacity(capacity))
    }

    /// Write into `buffer` (emptied first): a previous body's allocation,
    /// whose pages are already in memory.
    pub fn reusing(format: Format, mut buffer: String) -> Self {
        buffer.clear();
        Self { format, out: buffer }
    }

    /// Start writing `family`'s samples.
    pub fn family(&mut self, family: &'static Family) -> Samples<'_> {
        Samples { exposition: self, family, started: false }
    }

    /// The finished body.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }

    fn header(&mut self, family: &Family) {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        match self.format {
            Format::Text => {
                let _ = writeln!(self.out, "# HELP {} {}", family.name, escape(family.help, false));
                let _ = writeln!(self.out, "# TYPE {} {kind}", family.name);
            }
            Format::OpenMetrics => {
                let name = family.openmetrics_name();
                let _ = writeln!(self.out, "# TYPE {name} {kind}");
                let _ = writeln!(self.out, "# HELP {name} {}", escape(family.help, true));
            }
        }
    }
}

/// A sample value: counts are written as exact integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Self {
        Self::Int(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

impl From<bool> for Value {
    fn from(value: bool) -> Self {
        Self::Int(u64::from(value))
    }
}

/// Families written at each scrape beside the harvest's, by a part of the
/// agent that keeps its own statistics (the HTTP listener).
pub trait Section: Send + Sync {
    fn write(&self, out: &mut Exposition);
}

/// The samples of one family.
pub struct Samples<'a> {
    exposition: &'a mut Exposition,
    family: &'static Family,
    started: bool,
}

impl Samples<'_> {
    /// One sample with label text from [`label_text`] (may be empty) and,
    /// if not empty, more label text after it.
    pub fn sample(&mut self, labels: &str, more: &str, value: impl Into<Value>) {
        self.start();
        let out = &mut self.exposition.out;
        out.push_str(self.family.name);
        if !labels.is_empty() || !more.is_empty() {
            out.push('{');
            out.push_str(labels);
            if !labels.is_empty() && !more.is_empty() {
                out.push(',');
            }
            out.push_str(more);
            out.push('}');
        }
        out.push(' ');
        write_value(out, value.into());
        out.push('\n');
    }

    /// One sample whose label values follow the family's label names
    /// (empty values are left out).
    pub fn values(&mut self, values: &[&str], value: impl Into<Value>) {
        debug_assert_eq!(values.len(), self.family.labels.len(), "{}", self.family.name);
        let labels = label_text(self.family.labels, values);
        self.sample(&labels, "", value);
    }

    /// The samples of a histogram: cumulative `buckets` by upper bound (the
    /// `+Inf` bucket is added), their sum and count.
    pub fn histogram(&mut self, buckets: &[(f64, u64)], sum: f64, count: u64) {
        debug_assert_eq!(self.family.kind, Kind::Histogram);
        self.start();
        let name = self.family.name;
        let out = &mut self.exposition.out;
        for (bound, cumulative) in buckets.iter().copied().chain([(f64::INFINITY, count)]) {
            let _ = write!(out, "{name}_bucket{{le=\"");
            write_value(out, Value::Float(bound));
            out.push_str("\"} ");
            write_value(out, Value::Int(cumulative));
            out.push('\n');
        }
        let _ = write!(out, "{name}_sum ");
        write_value(out, Value::Float(sum));
        let _ = writeln!(out, "\n{name}_count {count}");
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            self.exposition.header(self.family);
        }
    }
}

/// `name="value",…` for the non-empty values (an empty value is the same as
/// no label to Prometheus; leaving it out keeps unknown cgroups off the
/// wire), escaped for both formats.
pub fn label_text(names: &[&str], values: &[&str]) -> String {
    let mut out = String::new();
    for (name, value) in names.iter().zip(values) {
        if value.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape(value, true));
    }
    out
}

/// `\`, newline and (`quotes`) `"` escaped, as label values (both formats)
/// and OpenMetrics HELP require; Prometheus text HELP leaves `"` alone.
pub fn escape(text: &str, quotes: bool) -> Cow<'_, str> {
    let special = |c: char| c == '\\' || c == '\n' || (quotes && c == '"');
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\n' => out.push_str(r"\n"),
            '"' if quotes => out.push_str(r#"\""#),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn write_value(out: &mut String, value: Value) {
    match value {
        Value::Int(value) => out.push_str(itoa::Buffer::new().format(value)),
        // Both formats spell these the Go way; Rust's `inf`/`NaN` differ.
        Value::Float(value) if value.is_nan() => out.push_str("NaN"),
        Value::Float(value) if value.is_infinite() => out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" }),
        Value::Float(value) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// A histogram of durations, updated from any thread without a lock.
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), then the observations above every bound.
    counts: Vec<AtomicU64>,
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// `bounds`: upper bounds in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum_ns: AtomicU64::new(0) }
    }

    pub fn observe(&self, seconds: f64) {
        let bucket = self.bounds.iter().position(|bound| seconds <= *bound).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    /// Write it as `family`'s samples.
    pub fn render(&self, samples: &mut Samples<'_>) {
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(bound, count)| {
                cumulative += count.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        let count = cumulative + self.counts[self.bounds.len()].load(Ordering::Relaxed);
        samples.histogram(&buckets, self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::families::{Family, Kind, Plans};

    const PAGES: Family = Family {
        name: "x_pages_total",
        kind: Kind::Counter,
        unit: "pages",
        help: "Pages \"freed\" \\ here.\nSecond line.",
        labels: &["pid", "comm"],
        plans: Plans::All,
    };
    const NOW: Family =
        Family { name: "x_now", kind: Kind::Gauge, unit: "bytes", help: "Now.", labels: &[], plans: Plans::All };
    const LATENCY: Family = Family {
        name: "x_seconds",
        kind: Kind::Histogram,
        unit: "seconds",
        help: "Latency.",
        labels: &[],
        plans: Plans::All,
    };

    fn write(format: Format) -> String {
        let mut out = Exposition::new(format, 0);
        let mut pages = out.family(&PAGES);
        pages.values(&["1", "a \"q\" \\b\nc"], 3u64);
        pages.values(&["2", ""], 4u64);
        out.family(&NOW).sample("", "", f64::INFINITY);
        // No samples: no header either.
        out.family(&NOW);
        let histogram = Histogram::new(&[0.5, 1.0]);
        for seconds in [0.25, 0.75, 2.0] {
            histogram.observe(seconds);
        }
        histogram.render(&mut out.family(&LATENCY));
        out.finish()
    }

    #[test]
    fn prometheus_text() {
        assert_eq!(
            write(Format::Text),
            r#"# HELP x_pages_total Pages "freed" \\ here.\nSecond line.
# TYPE x_pages_total counter
x_pages_total{pid="1",comm="a \"q\" \\b\nc"} 3
x_pages_total{pid="2"} 4
# HELP x_now Now.
# TYPE x_now gauge
x_now +Inf
# HELP x_seconds Latency.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.5"} 1
x_seconds_bucket{le="1"} 2
x_seconds_bucket{le="+Inf"} 3
x_seconds_sum 3
x_seconds_count 3
"#
        );
    }

    #[test]
    fn openmetrics_counters_lose_total_in_the_family_and_the_exposition_ends_with_eof() {
        assert_eq!(
            write(Format::OpenMetrics),
            r#"# TYPE x_pages counter
# HELP x_pages Pages \"freed\" \\ here.\nSecond line.
x_pages_total{pid="1",comm="a \"q\" \\b\nc"} 3
x_pages_total{pid="2"} 4
# TYPE x_now gauge
# HELP x_now Now.
x_now +Inf
# TYPE x_seconds histogram
# HELP x_seconds Latency.
x_seconds_bucket{le="0.5"} 1
x_seconds_bucket{le="1"} 2
x_seconds_bucket{le="+Inf"} 3
x_seconds_sum 3
x_seconds_count 3
# EOF
"#
        );
    }

    #[test]
    fn values_and_label_text() {
        let mut out = String::new();
        for value in [Value::Int(u64::MAX), Value::Float(-2.5), Value::Float(f64::NAN), Value::Float(0.001)] {
            write_value(&mut out, value);
            out.push(' ');
        }
        assert_eq!(out, "18446744073709551615 -2.5 NaN 0.001 ");
        assert_eq!(label_text(&["a", "b", "c"], &["", "x", "y\"z"]), r#"b="x",c="y\"z""#);
        assert!(matches!(escape("plain", true), Cow::Borrowed(_)));
    }

    #[test]
    fn an_empty_exposition() {
        assert_eq!(Exposition::new(Format::OpenMetrics, 0).finish(), "# EOF\n");
        assert_eq!(Exposition::new(Format::Text, 0).finish(), "");
    }
}
