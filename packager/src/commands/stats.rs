//! `wasmpack stats`: the per-model table from Envoy's /stats/prometheus.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::StatsArgs;
use crate::{prom, stats};

/// Fetches the exposition. Envoy merges histograms at a stats flush, which a scrape triggers
/// (`stats_flush_on_admin`, as `wasmpack run` configures) but does not wait for: read twice.
pub async fn scrape(admin: &str) -> Result<Vec<prom::Sample>> {
    let url = format!("{}/stats/prometheus", admin_url(admin));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()?;
    let get = || async {
        let r = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach Envoy's admin at {url}"))?;
        if !r.status().is_success() {
            bail!("{url} answered {}", r.status());
        }
        r.text().await.context("reading the stats")
    };
    get().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    prom::parse(&get().await?).map_err(|e| anyhow::anyhow!("{url}: not Prometheus text: {e}"))
}

/// `127.0.0.1:9901`, `localhost:9901` or a URL → the admin's base URL.
pub fn admin_url(admin: &str) -> String {
    let a = admin.trim().trim_end_matches('/');
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

pub async fn run(args: &StatsArgs) -> Result<()> {
    loop {
        let summary = stats::summarize(&scrape(&args.admin).await?);
        if args.json || args.output == crate::cli::Output::Json {
            let rows: Vec<serde_json::Value> = summary
                .rows
                .iter()
                .map(|r| {
                    serde_json::json!({"model": r.model, "destination": r.destination, "requests": r.requests, "errors": r.errors,
                        "inputTokens": r.input_tokens, "outputTokens": r.output_tokens, "outputTokensPerSecond": r.tokens_per_second,
                        "p50Ms": r.p50_ms, "p99Ms": r.p99_ms, "ttftP50Ms": r.ttft_p50_ms, "ttftP99Ms": r.ttft_p99_ms, "inFlight": r.in_flight})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"rows": rows, "rejected": summary.rejected, "holdReleased": summary.hold_released})
            );
        } else {
            if args.watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", stats::render(&summary));
        }
        let Some(every) = args.watch else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every.max(1))) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
