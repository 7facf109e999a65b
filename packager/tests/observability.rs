//! manifests/observability: the Grafana dashboard and the PrometheusRule alerts are well formed,
//! every query parses as PromQL, and every metric and label they use is one the filter emits.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use model_router::telemetry::{
    COUNTERS_AND_GAUGES, HISTOGRAMS, IN_FLIGHT, LABEL_KEYS, REJECTED_TOTAL, REQUESTS_TOTAL, TOKENS_TOTAL,
};
use promql_parser::label::Matchers;
use promql_parser::parser::{self, Expr, LabelModifier};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/observability")
}

/// Every series name the filter emits, with histogram suffixes.
fn emitted() -> BTreeSet<String> {
    let mut s: BTreeSet<String> = COUNTERS_AND_GAUGES.iter().map(|x| x.to_string()).collect();
    for h in HISTOGRAMS {
        for suffix in ["_bucket", "_sum", "_count"] {
            s.insert(format!("{h}{suffix}"));
        }
    }
    s
}

#[derive(Default)]
struct Used {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn matchers(m: &Matchers, used: &mut Used) {
    for x in m.matchers.iter().chain(m.or_matchers.iter().flatten()) {
        if x.name == "__name__" {
            used.metrics.insert(x.value.clone());
        } else {
            used.labels.insert(x.name.clone());
        }
    }
}

fn walk(e: &Expr, used: &mut Used) {
    match e {
        Expr::Aggregate(a) => {
            if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) = &a.modifier {
                used.labels.extend(l.labels.iter().cloned());
            }
            walk(&a.expr, used);
            if let Some(p) = &a.param {
                walk(p, used);
            }
        }
        Expr::Unary(u) => walk(&u.expr, used),
        Expr::Binary(b) => {
            if let Some(LabelModifier::Include(l) | LabelModifier::Exclude(l)) =
                b.modifier.as_ref().and_then(|m| m.matching.as_ref())
            {
                used.labels.extend(l.labels.iter().cloned());
            }
            walk(&b.lhs, used);
            walk(&b.rhs, used);
        }
        Expr::Paren(p) => walk(&p.expr, used),
        Expr::Subquery(s) => walk(&s.expr, used),
        Expr::VectorSelector(v) => {
            if let Some(n) = &v.name {
                used.metrics.insert(n.clone());
            }
            matchers(&v.matchers, used);
        }
        Expr::MatrixSelector(m) => {
            if let Some(n) = &m.vs.name {
                used.metrics.insert(n.clone());
            }
            matchers(&m.vs.matchers, used);
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, used)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses a query (Grafana variables replaced by values) and checks its metrics and labels.
fn check_query(q: &str) -> Used {
    let concrete = q.replace("$__rate_interval", "5m").replace("$model", ".*");
    let expr = parser::parse(&concrete).unwrap_or_else(|e| panic!("does not parse: {e}\n{q}"));
    let mut used = Used::default();
    walk(&expr, &mut used);
    assert!(!used.metrics.is_empty(), "no metric in {q}");
    let emitted = emitted();
    for m in &used.metrics {
        assert!(emitted.contains(m), "{m} is not a metric the filter emits ({q})");
    }
    for l in &used.labels {
        assert!(
            LABEL_KEYS.contains(&l.as_str()) || l == "le",
            "label {l} is not one the filter emits ({q})"
        );
    }
    used
}

#[test]
fn dashboard_queries_parse_and_use_emitted_metrics() {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("grafana-dashboard.json")).unwrap()).unwrap();
    assert!(d["title"].is_string() && d["uid"].is_string() && d["schemaVersion"].is_number());
    let panels = d["panels"].as_array().unwrap();
    let mut all = Used::default();
    let mut titles = Vec::new();
    for p in panels {
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        assert!(p["gridPos"]["w"].is_number() && p["gridPos"]["h"].is_number());
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty());
        for t in targets {
            let u = check_query(t["expr"].as_str().unwrap());
            all.metrics.extend(u.metrics);
        }
    }
    // What the dashboard promises to show.
    for want in [
        "tokens per second",
        "first token",
        "p50 / p99",
        "in-flight",
        "canary split",
        "rejections",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel for {want}: {titles:?}"
        );
    }
    for m in [TOKENS_TOTAL, IN_FLIGHT, REJECTED_TOTAL, REQUESTS_TOTAL] {
        assert!(all.metrics.contains(m), "dashboard never shows {m}");
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            assert!(q.contains(REQUESTS_TOTAL), "{q}");
        }
    }
}

#[test]
fn alert_rules_are_well_formed() {
    let text = std::fs::read_to_string(dir().join("prometheus-rules.yaml")).unwrap();
    let r: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(r["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(r["kind"], "PrometheusRule");
    assert!(r["metadata"]["name"].is_string());
    let mut alerts = Vec::new();
    for g in r["spec"]["groups"].as_array().unwrap() {
        assert!(g["name"].is_string());
        for rule in g["rules"].as_array().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            alerts.push(name.to_string());
            check_query(rule["expr"].as_str().unwrap().trim());
            assert!(
                matches!(rule["labels"]["severity"].as_str(), Some("warning" | "critical")),
                "{name}"
            );
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            if let Some(f) = rule["for"].as_str() {
                assert!(f.ends_with('m') || f.ends_with('s'), "{name}: for {f}");
            }
        }
    }
    assert!(alerts.iter().any(|a| a.contains("ErrorRate")));
    assert!(alerts.iter().any(|a| a.contains("TimeToFirstToken")));
}

#[test]
fn the_checker_itself_catches_mistakes() {
    let bad = std::panic::catch_unwind(|| check_query("sum(rate(model_router_tokens{type=\"input\"}[5m]))"));
    assert!(bad.is_err(), "an unknown metric must fail");
    let bad = std::panic::catch_unwind(|| check_query("sum by (pod) (rate(model_router_tokens_total[5m]))"));
    assert!(bad.is_err(), "an unknown label must fail");
    let bad = std::panic::catch_unwind(|| check_query("sum(rate(model_router_tokens_total[5m])"));
    assert!(bad.is_err(), "a syntax error must fail");
}

/// docs/telemetry.md shows exactly the stats annotations `wasmpack manifests` renders.
#[test]
fn the_documented_istio_annotations_are_the_rendered_ones() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/telemetry.md")).unwrap();
    let a = wasmpack::render::stats_annotations();
    let buckets = &a["sidecar.istio.io/statsHistogramBuckets"];
    assert!(
        doc.contains(&format!("sidecar.istio.io/statsHistogramBuckets: '{buckets}'")),
        "{buckets}"
    );
    for key in [
        "sidecar.istio.io/statsInclusionRegexps",
        "sidecar.istio.io/extraStatTags",
    ] {
        let line = format!("{key}: \"{}\"", a[key]);
        assert!(doc.contains(&line), "{line}");
    }
    assert!(
        !a.contains_key("proxy.istio.io/config"),
        "the pod's own proxy config is not replaced"
    );
}
