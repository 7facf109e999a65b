//! `wasmpack stats`: the per-model table from Envoy's /stats/prometheus.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::{Output, StatsArgs};
use crate::{prom, stats};

/// Fetches the exposition. Envoy merges histograms at a stats flush, which a scrape triggers
/// (`stats_flush_on_admin`, as `wasmpack run` configures) but does not wait for: read twice.
pub async fn scrape(admin: &str) -> Result<Vec<prom::Sample>> {
    let url = format!("{}/stats/prometheus", admin_url(admin));
    // reqwest is built without a crypto provider of its own (one provider in wasmpack: ring).
    crate::commands::apply::install_crypto_provider();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .build()?;
    let get = || async {
        let r = client.get(&url).send().await.map_err(|e| {
            let why = if e.is_connect() {
                "nothing answers there (is Envoy running? `wasmpack run` prints its admin address)"
            } else if e.is_timeout() {
                "it did not answer in time"
            } else {
                "the request failed"
            };
            anyhow::anyhow!("cannot reach Envoy's admin at {url}: {why}")
        })?;
        if !r.status().is_success() {
            bail!("{url} answered {}: {NOT_ADMIN}", r.status());
        }
        r.text().await.context("reading the stats")
    };
    get().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = get().await?;
    match prom::parse(&text) {
        // Envoy's admin always has its own server stats: an empty page is something else.
        Ok(samples) if !samples.is_empty() => Ok(samples),
        Ok(_) => bail!("{url} answered with no metrics: {NOT_ADMIN}"),
        Err(e) => bail!("{url}: not Prometheus text ({e}): {NOT_ADMIN}"),
    }
}

/// What an answer that is not Envoy's stats most likely means.
const NOT_ADMIN: &str = "is this Envoy's admin address? Not the listener: `wasmpack run` prints \
     both; in a pod, the sidecar's admin listens on 127.0.0.1:15000 (`kubectl port-forward POD 15000`, \
     then `--admin 127.0.0.1:15000`)";

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
    let json = args.json || args.output == Output::Json;
    let Some(every) = args.watch else {
        let summary = stats::summarize(&scrape(&args.admin).await?);
        if json {
            println!("{}", summary_json(&summary));
        } else {
            print!("{}", stats::render(&summary));
        }
        return Ok(());
    };
    let every = every.max(1);
    let mut previous: Option<(stats::Summary, Instant)> = None;
    loop {
        match scrape(&args.admin).await {
            Ok(samples) => {
                let now = (stats::summarize(&samples), Instant::now());
                let rows = previous
                    .as_ref()
                    .map(|(before, at)| stats::rates(&now.0, before, now.1.duration_since(*at).as_secs_f64()));
                let stamp = chrono::Utc::now().format("%H:%M:%S");
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"time": stamp.to_string(), "rates": rows, "totals": summary_json(&now.0)})
                    );
                } else {
                    print!("\x1b[2J\x1b[H");
                    println!(
                        "{} every {every} s, {stamp} UTC (Ctrl-C stops)\n",
                        admin_url(&args.admin)
                    );
                    match &rows {
                        Some(r) => print!("{}", stats::render_rates(r)),
                        None => println!("(rates from the next scrape on)"),
                    }
                    println!("\ntotals since Envoy started:");
                    print!("{}", stats::render(&now.0));
                }
                previous = Some(now);
            }
            // Keep going: Envoy restarting or briefly unreachable is what watching is for.
            Err(e) if json => println!("{}", serde_json::json!({"error": format!("{e:#}")})),
            Err(e) => println!(
                "[{} UTC] scrape failed: {e:#}; retrying every {every} s",
                chrono::Utc::now().format("%H:%M:%S")
            ),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// A count (Prometheus exposes every sample as a float) as an integer when it is a whole number.
pub fn count(v: f64) -> serde_json::Value {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        serde_json::json!(v as i64)
    } else {
        serde_json::json!(v)
    }
}

fn counts(m: &std::collections::BTreeMap<String, f64>) -> serde_json::Value {
    serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), count(*v))).collect())
}

fn summary_json(summary: &stats::Summary) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = summary
        .rows
        .iter()
        .map(|r| {
            serde_json::json!({"model": r.model, "destination": r.destination, "requests": count(r.requests),
                "errors": count(r.errors), "classes": counts(&r.classes), "inputTokens": count(r.input_tokens),
                "outputTokens": count(r.output_tokens), "outputTokensPerSecond": r.tokens_per_second,
                "p50Ms": r.p50_ms, "p99Ms": r.p99_ms, "ttftP50Ms": r.ttft_p50_ms, "ttftP99Ms": r.ttft_p99_ms,
                "inFlight": count(r.in_flight), "state": r.state})
        })
        .collect();
    serde_json::json!({"rows": rows, "rejected": counts(&summary.rejected), "holdReleased": count(summary.hold_released)})
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_integers() {
        assert_eq!(super::count(54.0).to_string(), "54");
        assert_eq!(super::count(0.5).to_string(), "0.5");
        assert_eq!(super::count(f64::NAN).to_string(), "null");
    }

    /// A local server that answers every request with `status` and `body`, as the listener (the
    /// filter or its backend) would; its address.
    async fn answering(status: &'static str, body: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
            }
        });
        addr
    }

    /// Pointed at the listener instead of the admin, the error says which address to use.
    #[tokio::test]
    async fn the_listener_is_not_taken_for_the_admin() {
        for (status, body) in [
            ("404 Not Found", r#"{"error":{"message":"no route"}}"#),
            ("200 OK", r#"{"error":{"message":"model_required"}}"#),
            ("200 OK", ""),
        ] {
            let addr = answering(status, body).await;
            let e = super::scrape(&addr).await.unwrap_err().to_string();
            assert!(e.contains("is this Envoy's admin address?"), "{status} {body:?}: {e}");
            assert!(e.contains("127.0.0.1:15000"), "{e}");
        }
    }
}
