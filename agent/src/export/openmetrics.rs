//! OpenMetrics 1.0.0 for scrapers that ask for it in `Accept`: content
//! negotiation. The encoding itself is `exposition.rs`, shared with the
//! Prometheus text format.

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

#[cfg(test)]
mod tests {
    use super::*;

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
