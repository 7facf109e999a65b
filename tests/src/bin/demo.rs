//! The README's first command: real Envoy with model_router.wasm (started by `wasmpack run`) in
//! front of local OpenAI-compatible backends, a mix of real requests, then `wasmpack stats`.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    println!("== plugin configuration\n{}", e2e::demo::CONFIG);
    let mut d = e2e::demo::start().await?;
    println!(
        "== wasmpack run: Envoy 1.40 + model_router.wasm on http://{} (admin http://{})",
        d.run.listen, d.run.admin
    );
    let t = e2e::demo::traffic(&d).await?;
    println!("\n== requests");
    for l in &t.lines {
        println!("  {l}");
    }
    println!("\n== wasmpack stats --admin http://{}", d.run.admin);
    print!("{}", e2e::demo::stats(&d)?);
    println!("\n== access log (last 3 lines)");
    let log = std::fs::read_to_string(&d.run.log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for l in &lines[lines.len().saturating_sub(3)..] {
        println!("  {l}");
    }
    let status = d.run.interrupt()?;
    println!("\n== stopped wasmpack run with Ctrl-C: {status}");
    Ok(())
}
