//! OpenMetrics 1.0.0 text, for scrapers that ask for it in `Accept`.
//!
//! The prometheus crate (0.14) only encodes the Prometheus text format 0.0.4,
//! so this writes OpenMetrics from the same `MetricFamily` values. The
//! differences that matter here: a counter's family is named without
//! `_total` while its samples carry it, `untyped` is `unknown`, `"` is
//! escaped in HELP too, timestamps are in seconds, and the exposition ends
//! with `# EOF`.

use std::fmt::Write as _;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics to the Prometheus text
/// format. Weights are honoured; at equal weight OpenMetrics wins, since a
/// client that names it explicitly knows it. Only OpenMetrics versions this
/// encoder's output satisfies (1.0.0, the pre-release 0.0.1, or none given)
/// count.
pub fn preferred(accept: &str) -> bool {
    let mut openmetrics = 0.0_f32;
    let mut text = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let mut q = 1.0_f32;
        let mut version = None;
        for param in parts {
            let Some((name, value)) = param.split_once('=') else { continue };
            let value = value.trim().trim_matches('"');
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => q = value.parse().unwrap_or(0.0),
                "version" => version = Some(value.to_owned()),
                _ => {}
            }
        }
        match media.as_str() {
            "application/openmetrics-text" if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) => {
                openmetrics = openmetrics.max(q);
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// Encode `families` as one OpenMetrics exposition, `# EOF` included.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for family in families {
        encode_family(&mut out, family);
    }
    out.push_str("# EOF\n");
    out
}

fn encode_family(out: &mut String, family: &MetricFamily) {
    let kind = family.get_field_type();
    let name = family.name();
    // The family of a counter is named without `_total`; each sample has it.
    let family_name = match kind {
        MetricType::COUNTER => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let type_name = match kind {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "unknown",
    };
    let _ = writeln!(out, "# TYPE {family_name} {type_name}");
    if !family.help().is_empty() {
        let _ = writeln!(out, "# HELP {family_name} {}", escape(family.help()));
    }
    for metric in family.get_metric() {
        let labels = metric.get_label();
        match kind {
            MetricType::COUNTER => {
                sample(out, &format!("{family_name}_total"), labels, None, metric.get_counter().get_value(), metric);
            }
            MetricType::GAUGE => sample(out, family_name, labels, None, metric.get_gauge().get_value(), metric),
            MetricType::UNTYPED => {
                #[expect(deprecated, reason = "the crate deprecates untyped metrics but can still hand them over")]
                let value = metric.get_untyped().get_value();
                sample(out, family_name, labels, None, value, metric);
            }
            MetricType::HISTOGRAM => {
                let histogram = metric.get_histogram();
                let bucket = format!("{family_name}_bucket");
                let mut saw_inf = false;
                for b in histogram.get_bucket() {
                    saw_inf |= b.upper_bound().is_infinite();
                    let le = number(b.upper_bound());
                    sample(out, &bucket, labels, Some(("le", &le)), b.cumulative_count() as f64, metric);
                }
                // OpenMetrics requires the +Inf bucket; the 0.0.4 model leaves it implicit.
                if !saw_inf {
                    sample(out, &bucket, labels, Some(("le", "+Inf")), histogram.get_sample_count() as f64, metric);
                }
                sample(out, &format!("{family_name}_count"), labels, None, histogram.get_sample_count() as f64, metric);
                sample(out, &format!("{family_name}_sum"), labels, None, histogram.get_sample_sum(), metric);
            }
            MetricType::SUMMARY => {
                let summary = metric.get_summary();
                for q in summary.get_quantile() {
                    let quantile = number(q.quantile());
                    sample(out, family_name, labels, Some(("quantile", &quantile)), q.value(), metric);
                }
                sample(out, &format!("{family_name}_count"), labels, None, summary.sample_count() as f64, metric);
                sample(out, &format!("{family_name}_sum"), labels, None, summary.sample_sum(), metric);
            }
        }
    }
}

fn sample(
    out: &mut String,
    name: &str,
    labels: &[LabelPair],
    extra: Option<(&str, &str)>,
    value: f64,
    metric: &Metric,
) {
    out.push_str(name);
    let pairs = labels.iter().map(|l| (l.name(), l.value())).chain(extra);
    let mut first = true;
    for (label, value) in pairs {
        out.push(if first { '{' } else { ',' });
        first = false;
        let _ = write!(out, "{label}=\"{}\"", escape(value));
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    out.push_str(&number(value));
    // 0 means "no timestamp", as in the crate's own text encoder.
    let ms = metric.timestamp_ms();
    if ms != 0 {
        // OpenMetrics timestamps are seconds.
        let _ = write!(out, " {}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    }
    out.push('\n');
}

/// `\`, `"` and newline, as OpenMetrics' `escaped-string` requires in
/// label values and HELP alike.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// OpenMetrics numbers: Rust's `inf`/`NaN` spellings differ.
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use prometheus::proto::{Bucket, Counter, Gauge, Histogram};

    use super::*;

    fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(name.into());
        family.set_help(help.into());
        family.set_field_type(kind);
        family.set_metric(metrics);
        family
    }

    fn labelled(labels: &[(&str, &str)]) -> Metric {
        let mut metric = Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(n, v)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*n).into());
                    pair.set_value((*v).into());
                    pair
                })
                .collect(),
        );
        metric
    }

    fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
        let mut metric = labelled(labels);
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
        metric
    }

    fn gauge(value: f64) -> Metric {
        let mut metric = labelled(&[]);
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
        metric
    }

    #[test]
    fn counter_family_has_no_total_and_its_samples_do() {
        let text = encode(&[family(
            "x_pages_total",
            "Pages.",
            MetricType::COUNTER,
            vec![counter(&[("pid", "1")], 3.0), counter(&[("pid", "2")], 4.0)],
        )]);
        assert_eq!(
            text,
            "# TYPE x_pages counter\n# HELP x_pages Pages.\nx_pages_total{pid=\"1\"} 3\nx_pages_total{pid=\"2\"} 4\n# EOF\n"
        );
    }

    #[test]
    fn counter_without_total_suffix_gains_it_on_samples() {
        let text = encode(&[family("x_calls", "", MetricType::COUNTER, vec![counter(&[], 1.0)])]);
        assert_eq!(text, "# TYPE x_calls counter\nx_calls_total 1\n# EOF\n");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let text = encode(&[family(
            "x_total",
            "a \"b\" \\ c\nd",
            MetricType::COUNTER,
            vec![counter(&[("comm", "a \"q\" \\b\nc")], 1.0)],
        )]);
        assert!(text.contains(r#"# HELP x a \"b\" \\ c\nd"#), "{text}");
        assert!(text.contains(r#"x_total{comm="a \"q\" \\b\nc"} 1"#), "{text}");
    }

    #[test]
    fn empty_exposition_is_just_eof() {
        assert_eq!(encode(&[]), "# EOF\n");
    }

    #[test]
    fn gauges_numbers_and_unknown() {
        let mut untyped = labelled(&[]);
        #[expect(deprecated, reason = "untyped still has to be encoded")]
        {
            let mut u = prometheus::proto::Untyped::default();
            u.set_value(f64::NAN);
            untyped.set_untyped(u);
        }
        let text = encode(&[
            family("g", "G.", MetricType::GAUGE, vec![gauge(f64::INFINITY)]),
            family("h", "", MetricType::GAUGE, vec![gauge(-2.5)]),
            family("u", "", MetricType::UNTYPED, vec![untyped]),
        ]);
        assert_eq!(
            text,
            "# TYPE g gauge\n# HELP g G.\ng +Inf\n# TYPE h gauge\nh -2.5\n# TYPE u unknown\nu NaN\n# EOF\n"
        );
    }

    #[test]
    fn histogram_gets_its_inf_bucket() {
        let mut metric = labelled(&[]);
        let mut h = Histogram::default();
        let mut b = Bucket::default();
        b.set_upper_bound(0.5);
        b.set_cumulative_count(2);
        h.set_bucket(vec![b]);
        h.set_sample_count(3);
        h.set_sample_sum(1.25);
        metric.set_histogram(h);
        let text = encode(&[family("lat_seconds", "", MetricType::HISTOGRAM, vec![metric])]);
        assert_eq!(
            text,
            "# TYPE lat_seconds histogram\nlat_seconds_bucket{le=\"0.5\"} 2\nlat_seconds_bucket{le=\"+Inf\"} 3\nlat_seconds_count 3\nlat_seconds_sum 1.25\n# EOF\n"
        );
    }

    #[test]
    fn negotiation() {
        // Prometheus 2.x's scrape header.
        assert!(preferred(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        ));
        assert!(preferred("application/openmetrics-text"));
        assert!(preferred("Application/OpenMetrics-Text; version=1.0.0; charset=utf-8"));
        assert!(!preferred("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"));
        assert!(!preferred("application/openmetrics-text;version=2.0.0"));
        assert!(!preferred("application/openmetrics-text;q=0"));
        assert!(!preferred("*/*"));
        assert!(!preferred(""));
        assert!(!preferred("text/plain"));
    }
}
