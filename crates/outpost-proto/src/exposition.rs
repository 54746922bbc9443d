//! The two text formats of `/metrics` and the choice between them.
//!
//! Metrics are encoded once, as OpenMetrics 1.0.0 (what `prometheus-client` writes). A scraper
//! that asks for `application/openmetrics-text` gets that body as it is; every other client
//! (`curl`, `promtool check metrics`, Prometheus' classic text parser) gets the Prometheus text
//! format 0.0.4, which differs in ways that matter to parsers: a counter family is named after
//! its sample (`x_total`), there is no `# EOF` or `# UNIT` line and no exemplars. Labelling one
//! format with the other's content type makes counters lose their type and help text, which is
//! the bug this module exists to prevent. Pure text in, text out, so both services share it.

/// A metrics exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
}

/// Content type of an OpenMetrics 1.0.0 body.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of a Prometheus text 0.0.4 body.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Exposition {
    /// Picks the format an `Accept` header prefers: OpenMetrics when it ranks
    /// `application/openmetrics-text` (version 1.0.0, 0.0.1 or unversioned) above plain text,
    /// otherwise the Prometheus text format, which is also the answer to no or an unusable header.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else { return Exposition::Prometheus };
        let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f32, None);
            for param in parts {
                let Some((key, value)) = param.split_once('=') else { continue };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.parse().ok().filter(|q: &f32| (0.0..=1.0).contains(q)).unwrap_or(0.0),
                    "version" => version = Some(value.to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                "application/openmetrics-text" if matches!(version.as_deref(), None | Some("1.0.0" | "0.0.1")) => {
                    openmetrics = openmetrics.max(q)
                }
                "text/plain" if matches!(version.as_deref(), None | Some("0.0.4")) => text = text.max(q),
                "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics > text {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Exposition::Prometheus => PROMETHEUS_CONTENT_TYPE,
        }
    }

    /// `openmetrics` (an OpenMetrics 1.0.0 text body) in this format.
    pub fn render(self, openmetrics: &str) -> String {
        match self {
            Exposition::OpenMetrics => openmetrics.to_string(),
            Exposition::Prometheus => to_prometheus_text(openmetrics),
        }
    }
}

/// Rewrites an OpenMetrics 1.0.0 body as Prometheus text 0.0.4: counter families take their
/// sample's `_total` name, info families their `_info` name, other types without a 0.0.4
/// equivalent become `untyped`; `# EOF`, `# UNIT`, `_created` samples and exemplars are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    // A family's HELP line comes before its TYPE line, so the types are read first.
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name, kind.trim()))
        .collect();
    let family_name = |name: &str| -> String {
        match types.get(name).copied() {
            Some("counter") => format!("{name}_total"),
            Some("info") => format!("{name}_info"),
            _ => name.to_string(),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            // 0.0.4 escapes only `\\` and `\n` in help text; OpenMetrics also escapes `"`.
            out.push_str(&format!("# HELP {} {}\n", family_name(name), help.replace("\\\"", "\"")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let kind = match kind.trim() {
                k @ ("counter" | "gauge" | "histogram" | "summary") => k,
                "info" | "stateset" => "gauge",
                _ => "untyped",
            };
            out.push_str(&format!("# TYPE {} {kind}\n", family_name(name)));
        } else if line.starts_with('#') {
            // `# EOF`, `# UNIT` and any other comment have no place in 0.0.4.
        } else if !line.is_empty() {
            let sample = strip_exemplar(line);
            let name = sample.split(['{', ' ']).next().unwrap_or("");
            let created = name
                .strip_suffix("_created")
                .is_some_and(|family| matches!(types.get(family).copied(), Some("counter" | "histogram" | "summary")));
            if !created {
                out.push_str(sample);
                out.push('\n');
            }
        }
    }
    out
}

/// A sample line without its exemplar (` # {labels} value`), which 0.0.4 cannot carry. The
/// exemplar starts at the first ` # ` outside the quoted label values.
fn strip_exemplar(line: &str) -> &str {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '#' if !quoted && line[..i].ends_with(' ') => return line[..i].trim_end(),
            _ => {}
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "# HELP app_requests Requests \"seen\".\n# TYPE app_requests counter\n\
app_requests_total{model=\"a # b\"} 3 # {trace_id=\"x\"} 1.0\napp_requests_created{model=\"a # b\"} 1.7e9\n\
# HELP app_latency_seconds Latency.\n# TYPE app_latency_seconds histogram\n# UNIT app_latency_seconds seconds\n\
app_latency_seconds_sum 0.5\napp_latency_seconds_count 2\napp_latency_seconds_bucket{le=\"+Inf\"} 2\n\
# HELP app_build Build.\n# TYPE app_build info\napp_build_info{version=\"1\"} 1\n\
# HELP app_up Up.\n# TYPE app_up gauge\napp_up 1\n# EOF\n";

    #[test]
    fn counters_are_named_after_their_samples_in_prometheus_text() {
        let text = to_prometheus_text(OPENMETRICS);
        assert!(text.contains("# HELP app_requests_total Requests \"seen\".\n# TYPE app_requests_total counter\n"));
        assert!(text.contains("app_requests_total{model=\"a # b\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE app_latency_seconds histogram\n"));
        assert!(text
            .contains("# HELP app_build_info Build.\n# TYPE app_build_info gauge\napp_build_info{version=\"1\"} 1\n"));
        assert!(text.contains("# TYPE app_up gauge\napp_up 1\n"));
        for gone in ["# EOF", "# UNIT", "_created", "trace_id"] {
            assert!(!text.contains(gone), "`{gone}` left in {text}");
        }
    }

    #[test]
    fn openmetrics_is_chosen_only_when_the_client_ranks_it_first() {
        use Exposition::*;
        let prometheus_scrape = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;\
                                 version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Exposition::negotiate(Some(prometheus_scrape)), OpenMetrics);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text")), OpenMetrics);
        assert_eq!(
            Exposition::negotiate(Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5")),
            Prometheus
        );
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text; version=2.0.0")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("application/openmetrics-text;q=0")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("*/*")), Prometheus);
        assert_eq!(Exposition::negotiate(Some("application/json")), Prometheus);
        assert_eq!(Exposition::negotiate(None), Prometheus);
        assert!(OpenMetrics.content_type().starts_with("application/openmetrics-text; version=1.0.0"));
        assert!(Prometheus.content_type().starts_with("text/plain; version=0.0.4"));
    }
}
