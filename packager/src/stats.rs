//! The per-model table of `wasmpack stats`, computed from Envoy's Prometheus exposition.

use std::collections::BTreeMap;

use crate::prom::Sample;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub model: String,
    pub destination: String,
    pub requests: f64,
    /// 4xx and 5xx.
    pub errors: f64,
    pub input_tokens: f64,
    pub output_tokens: f64,
    /// Output tokens per second of request time (generation throughput); unknown when requests
    /// took under a millisecond on average (the filter records whole milliseconds).
    pub tokens_per_second: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub in_flight: f64,
    /// Cumulative requests by status class (`2xx`, `4xx`, `5xx`, …).
    pub classes: BTreeMap<String, f64>,
    /// Cumulative histogram buckets (upper bound, count) of the request duration and the TTFT.
    pub duration_buckets: Vec<(f64, f64)>,
    pub ttft_buckets: Vec<(f64, f64)>,
    /// The destination's breaker (`failover`): `closed`, `open`, `half-open`; `None` without failover.
    pub state: Option<&'static str>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub rows: Vec<Row>,
    /// Rejections by reason.
    pub rejected: BTreeMap<String, f64>,
    pub hold_released: f64,
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket holding the rank.
/// `buckets`: (upper bound, cumulative count), any order.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &b {
        if count >= rank {
            if le.is_infinite() {
                // Above the highest finite bound: report that bound, as Prometheus does.
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

fn label<'a>(s: &'a Sample, k: &str) -> &'a str {
    s.labels.get(k).map(String::as_str).unwrap_or("")
}

/// (upper bound, cumulative count) pairs of one histogram series.
type Buckets = Vec<(f64, f64)>;

fn row_for<'a>(rows: &'a mut BTreeMap<(String, String), Row>, key: &(String, String)) -> &'a mut Row {
    rows.entry(key.clone()).or_insert_with(|| Row {
        model: key.0.clone(),
        destination: key.1.clone(),
        ..Default::default()
    })
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut hist: BTreeMap<(&str, String, String), Buckets> = BTreeMap::new();
    let mut duration_sum: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut out = Summary::default();
    for s in samples.iter().filter(|s| s.name.starts_with("model_router_")) {
        let key = (label(s, "model").to_string(), label(s, "destination").to_string());
        match s.name.as_str() {
            "model_router_requests_total" => {
                let r = row_for(&mut rows, &key);
                r.requests += s.value;
                *r.classes.entry(label(s, "code_class").to_string()).or_default() += s.value;
                if matches!(label(s, "code_class"), "4xx" | "5xx") {
                    r.errors += s.value;
                }
            }
            "model_router_tokens_total" => {
                let r = row_for(&mut rows, &key);
                match label(s, "type") {
                    "input" => r.input_tokens += s.value,
                    "output" => r.output_tokens += s.value,
                    _ => {}
                }
            }
            "model_router_in_flight_requests" => row_for(&mut rows, &key).in_flight += s.value,
            "model_router_destination_state" => {
                // Several proxies: the worst state any of them sees.
                let state = ["closed", "open", "half-open"]
                    .get(s.value as usize)
                    .copied()
                    .unwrap_or("open");
                let r = row_for(&mut rows, &key);
                if r.state
                    .is_none_or(|was| was == "closed" || (was == "half-open" && state == "open"))
                {
                    r.state = Some(state);
                }
            }
            "model_router_request_duration_milliseconds_bucket"
            | "model_router_time_to_first_token_milliseconds_bucket" => {
                let le = match label(s, "le") {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or(f64::INFINITY),
                };
                let which = if s.name.contains("duration") {
                    "duration"
                } else {
                    "ttft"
                };
                hist.entry((which, key.0, key.1)).or_default().push((le, s.value));
            }
            "model_router_request_duration_milliseconds_sum" => {
                *duration_sum.entry(key).or_default() += s.value;
            }
            // A reason nothing was rejected for (the filter makes `model_unavailable` at zero) is
            // not shown.
            "model_router_rejected_total" if s.value > 0.0 => {
                *out.rejected.entry(label(s, "reason").to_string()).or_default() += s.value;
            }
            "model_router_hold_released_total" => out.hold_released += s.value,
            _ => {}
        }
    }
    for ((which, m, d), mut buckets) in hist {
        if let Some(r) = rows.get_mut(&(m, d)) {
            buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
            let (p50, p99) = (quantile(0.5, &buckets), quantile(0.99, &buckets));
            if which == "duration" {
                (r.p50_ms, r.p99_ms) = (p50, p99);
                r.duration_buckets = buckets;
            } else {
                (r.ttft_p50_ms, r.ttft_p99_ms) = (p50, p99);
                r.ttft_buckets = buckets;
            }
        }
    }
    for (key, sum_ms) in duration_sum {
        if let Some(r) = rows.get_mut(&key) {
            // Durations are recorded in whole milliseconds (truncated): below one per request on
            // average, the sum is mostly rounding and the rate would be absurd, so it is unknown.
            let count = r.duration_buckets.last().map_or(r.requests, |b| b.1);
            if sum_ms > 0.0 && sum_ms >= count && r.output_tokens > 0.0 {
                r.tokens_per_second = Some(r.output_tokens / (sum_ms / 1000.0));
            }
        }
    }
    out.rows = rows.into_values().filter(|r| !r.model.is_empty()).collect();
    out
}

/// One row of `stats --watch`: what happened between two scrapes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateRow {
    pub model: String,
    pub destination: String,
    pub requests_per_second: f64,
    /// This destination's part of its model's requests in the interval (the canary split as it
    /// really is), 0–1; `None` when the model had no requests.
    pub share: Option<f64>,
    /// Requests in the interval by status class.
    pub classes: BTreeMap<String, f64>,
    pub tokens_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub in_flight: f64,
}

/// Bucket counts between two cumulative histograms (a counter reset starts over).
fn bucket_delta(now: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(le, c)| {
            let b = before.iter().find(|x| x.0 == le).map_or(0.0, |x| x.1);
            (le, if c >= b { c - b } else { c })
        })
        .collect()
}

/// Rates between two summaries taken `seconds` apart; counters that went down (an Envoy restart)
/// count from zero.
pub fn rates(now: &Summary, before: &Summary, seconds: f64) -> Vec<RateRow> {
    let secs = seconds.max(0.001);
    let delta = |a: f64, b: f64| if a >= b { a - b } else { a };
    let mut out: Vec<RateRow> = now
        .rows
        .iter()
        .map(|r| {
            let prev = before
                .rows
                .iter()
                .find(|p| p.model == r.model && p.destination == r.destination)
                .cloned()
                .unwrap_or_default();
            let classes: BTreeMap<String, f64> = r
                .classes
                .iter()
                .map(|(k, v)| (k.clone(), delta(*v, prev.classes.get(k).copied().unwrap_or(0.0))))
                .collect();
            let d = bucket_delta(&r.duration_buckets, &prev.duration_buckets);
            let t = bucket_delta(&r.ttft_buckets, &prev.ttft_buckets);
            let tokens = delta(r.input_tokens + r.output_tokens, prev.input_tokens + prev.output_tokens);
            RateRow {
                model: r.model.clone(),
                destination: r.destination.clone(),
                requests_per_second: delta(r.requests, prev.requests) / secs,
                share: None,
                classes,
                tokens_per_second: tokens / secs,
                p50_ms: quantile(0.5, &d),
                p99_ms: quantile(0.99, &d),
                ttft_p50_ms: quantile(0.5, &t),
                ttft_p99_ms: quantile(0.99, &t),
                in_flight: r.in_flight,
            }
        })
        .collect();
    let mut per_model: BTreeMap<String, f64> = BTreeMap::new();
    for r in &out {
        *per_model.entry(r.model.clone()).or_default() += r.requests_per_second;
    }
    for r in &mut out {
        let total = per_model.get(&r.model).copied().unwrap_or(0.0);
        r.share = (total > 0.0).then(|| r.requests_per_second / total);
    }
    out
}

/// The `--watch` table.
pub fn render_rates(rows: &[RateRow]) -> String {
    let header = [
        "MODEL",
        "DESTINATION",
        "SHARE",
        "REQ/S",
        "2XX",
        "4XX",
        "5XX",
        "TOK/S",
        "P50 MS",
        "P99 MS",
        "TTFT P50",
        "TTFT P99",
        "IN FLIGHT",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let class = |c: &str| num(r.classes.get(c).copied().unwrap_or(0.0));
        table.push(vec![
            r.model.clone(),
            r.destination.clone(),
            r.share.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
            format!("{:.1}", r.requests_per_second),
            class("2xx"),
            class("4xx"),
            class("5xx"),
            format!("{:.1}", r.tokens_per_second),
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.ttft_p50_ms),
            opt(r.ttft_p99_ms),
            num(r.in_flight),
        ]);
    }
    columns(&table)
}

fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < 2 {
                    format!("{c:<w$}", w = widths[i])
                } else {
                    format!("{c:>w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_else(|| "-".into())
}

/// A fixed-width text table.
pub fn render(s: &Summary) -> String {
    let header = [
        "MODEL",
        "DESTINATION",
        "REQUESTS",
        "ERRORS",
        "IN TOKENS",
        "OUT TOKENS",
        "OUT TOK/S",
        "P50 MS",
        "P99 MS",
        "TTFT P50",
        "TTFT P99",
        "IN FLIGHT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in &s.rows {
        let err = if r.requests > 0.0 {
            format!("{:.1}%", 100.0 * r.errors / r.requests)
        } else {
            "-".into()
        };
        rows.push(vec![
            r.model.clone(),
            r.destination.clone(),
            num(r.requests),
            err,
            num(r.input_tokens),
            num(r.output_tokens),
            opt(r.tokens_per_second),
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.ttft_p50_ms),
            opt(r.ttft_p99_ms),
            num(r.in_flight),
        ]);
    }
    if s.rows.iter().any(|r| r.state.is_some()) {
        rows[0].push("STATE".into());
        for (row, r) in rows[1..].iter_mut().zip(&s.rows) {
            row.push(r.state.unwrap_or("-").into());
        }
    }
    let mut out = columns(&rows);
    if !s.rejected.is_empty() {
        let parts: Vec<String> = s.rejected.iter().map(|(k, v)| format!("{k}={}", num(*v))).collect();
        out.push_str(&format!("rejected: {}\n", parts.join(" ")));
    }
    if s.hold_released > 0.0 {
        out.push_str(&format!("held requests released unrouted: {}\n", num(s.hold_released)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_column_shows_the_breakers() {
        let text = "model_router_requests_total{model=\"m\",destination=\"a\",code_class=\"2xx\"} 5\n\
                    model_router_requests_total{model=\"m\",destination=\"b\",code_class=\"5xx\"} 3\n\
                    model_router_destination_state{model=\"m\",destination=\"a\"} 0\n\
                    model_router_destination_state{model=\"m\",destination=\"b\"} 1\n";
        let s = summarize(&crate::prom::parse(text).unwrap());
        let states: Vec<_> = s.rows.iter().map(|r| r.state).collect();
        assert_eq!(states, [Some("closed"), Some("open")]);
        let table = render(&s);
        assert!(table.lines().next().unwrap().ends_with("STATE"), "{table}");
        assert!(table.lines().nth(2).unwrap().ends_with("open"), "{table}");
        let without = summarize(
            &crate::prom::parse("model_router_requests_total{model=\"m\",destination=\"a\",code_class=\"2xx\"} 5\n")
                .unwrap(),
        );
        assert!(!render(&without).contains("STATE"));
    }
    use crate::prom::parse;

    #[test]
    fn quantiles_like_prometheus() {
        let b = [(10.0, 0.0), (20.0, 5.0), (40.0, 10.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(0.5, &b), Some(20.0));
        assert_eq!(quantile(0.75, &b), Some(30.0));
        assert_eq!(quantile(0.25, &b), Some(15.0));
        assert_eq!(quantile(0.5, &[(10.0, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(quantile(0.99, &[(10.0, 0.0), (f64::INFINITY, 3.0)]), Some(10.0));
    }

    #[test]
    fn no_token_rate_from_durations_below_the_millisecond() {
        // 54 answers in microseconds: recorded as 0 ms but three of them, so the sum is 3 ms.
        let exposition = |sum: u32| {
            format!(
                r#"
model_router_requests_total{{model="m",destination="d",code_class="2xx"}} 54
model_router_tokens_total{{model="m",destination="d",type="output"}} 648
model_router_request_duration_milliseconds_bucket{{model="m",destination="d",le="1"}} 54
model_router_request_duration_milliseconds_bucket{{model="m",destination="d",le="+Inf"}} 54
model_router_request_duration_milliseconds_sum{{model="m",destination="d"}} {sum}
"#
            )
        };
        let rate = |sum| summarize(&parse(&exposition(sum)).unwrap()).rows[0].tokens_per_second;
        assert_eq!(rate(3), None);
        assert_eq!(rate(53), None);
        // From one millisecond per request on, it is a rate: 648 tokens in 54 ms.
        assert_eq!(rate(54), Some(12000.0));
    }

    #[test]
    fn table_from_exposition() {
        let text = r#"
model_router_requests_total{model="m",destination="d",code_class="2xx"} 8
model_router_requests_total{model="m",destination="d",code_class="4xx"} 2
model_router_requests_total{model="other",destination="other",code_class="4xx"} 3
model_router_tokens_total{model="m",destination="d",type="input"} 100
model_router_tokens_total{model="m",destination="d",type="output"} 50
model_router_tokens_total{model="m",destination="d",type="cached_input"} 7
model_router_in_flight_requests{model="m",destination="d"} 1
model_router_request_duration_milliseconds_bucket{model="m",destination="d",le="10"} 0
model_router_request_duration_milliseconds_bucket{model="m",destination="d",le="20"} 10
model_router_request_duration_milliseconds_bucket{model="m",destination="d",le="+Inf"} 10
model_router_request_duration_milliseconds_sum{model="m",destination="d"} 500
model_router_rejected_total{reason="model_not_found"} 3
model_router_rejected_total{model="llama",reason="model_unavailable"} 0
envoy_cluster_upstream_rq{x="y"} 1
"#;
        let s = summarize(&parse(text).unwrap());
        assert_eq!(s.rows.len(), 2);
        let r = &s.rows[0];
        assert_eq!(
            (r.requests, r.errors, r.input_tokens, r.output_tokens, r.in_flight),
            (10.0, 2.0, 100.0, 50.0, 1.0)
        );
        assert_eq!(r.p50_ms, Some(15.0));
        assert_eq!(r.tokens_per_second, Some(100.0));
        assert_eq!(r.ttft_p50_ms, None);
        let t = render(&s);
        assert!(t.lines().nth(1).unwrap().starts_with("m      d"), "{t}");
        assert!(t.contains("20.0%"), "{t}");
        assert!(t.contains("rejected: model_not_found=3\n"), "{t}");
    }

    #[test]
    fn rates_shares_and_windowed_percentiles() {
        let scrape = |v1: f64, v2: f64, slow: f64| {
            parse(&format!(
                "model_router_requests_total{{model=\"m\",destination=\"stable\",code_class=\"2xx\"}} {v1}\n\
                 model_router_requests_total{{model=\"m\",destination=\"canary\",code_class=\"5xx\"}} {v2}\n\
                 model_router_request_duration_milliseconds_bucket{{model=\"m\",destination=\"stable\",le=\"10\"}} {}\n\
                 model_router_request_duration_milliseconds_bucket{{model=\"m\",destination=\"stable\",le=\"1000\"}} {v1}\n\
                 model_router_request_duration_milliseconds_bucket{{model=\"m\",destination=\"stable\",le=\"+Inf\"}} {v1}\n",
                v1 - slow
            ))
            .unwrap()
        };
        let a = summarize(&scrape(100.0, 10.0, 0.0));
        let b = summarize(&scrape(190.0, 20.0, 90.0));
        let r = rates(&b, &a, 10.0);
        let stable = r.iter().find(|x| x.destination == "stable").unwrap();
        let canary = r.iter().find(|x| x.destination == "canary").unwrap();
        assert_eq!(stable.requests_per_second, 9.0);
        assert_eq!(canary.classes.get("5xx"), Some(&10.0));
        assert_eq!(stable.share, Some(0.9));
        assert!(
            stable.p50_ms.unwrap() > 10.0,
            "the window's requests were all slow: {:?}",
            stable.p50_ms
        );
        // A restarted Envoy (counters went down) counts from zero, never negative.
        let c = summarize(&scrape(5.0, 0.0, 0.0));
        assert!(rates(&c, &b, 1.0).iter().all(|x| x.requests_per_second >= 0.0));
        let t = render_rates(&r);
        assert!(
            t.lines().next().unwrap().contains("SHARE") && t.contains("90.0%"),
            "{t}"
        );
    }
}
