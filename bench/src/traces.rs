//! The tracing benchmark (SPEC section 13): `GET /tasks/{id}` requests/s with spans exported
//! over OTLP at 100 % and at 1 % sampling, as ratios to the same run with export off. The
//! trace pipeline is global to a process, so each configuration runs in a child process
//! (`tasklane-bench traces-run <mode> <collector>`); this process serves the collector, an
//! OTLP/HTTP endpoint that accepts and counts batches, as a real one would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Data;
use poem::{EndpointExt, handler};
use tasklane_shared::config::Settings;
use tasklane_shared::telemetry;

/// The configurations: name, sampling ratio, exported.
const MODES: [(&str, f64, bool); 3] =
    [("off", 1.0, false), ("100%", 1.0, true), ("1%", 0.01, true)];

#[handler]
async fn collect(body: poem::Body, batches: Data<&Arc<AtomicU64>>) -> &'static str {
    let _ = body.into_bytes().await;
    batches.fetch_add(1, Ordering::Relaxed);
    ""
}

pub async fn run() -> anyhow::Result<()> {
    let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await?;
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let batches = Arc::new(AtomicU64::new(0));
    let app = poem::Route::new().at("/v1/traces", poem::post(collect)).data(batches.clone());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    println!("# tracing benchmark: GET /tasks/{{id}}, 32 clients, 8 s per configuration");
    let exe = std::env::current_exe()?;
    let mut rates = Vec::new();
    for (index, (name, _, _)) in MODES.iter().enumerate() {
        let before = batches.load(Ordering::Relaxed);
        let output = tokio::process::Command::new(&exe)
            .args(["traces-run", &index.to_string(), &format!("http://{addr}/v1/traces")])
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let rate: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        let exported = batches.load(Ordering::Relaxed) - before;
        println!("tracing {name:>4}: {rate:>9.0} req/s  ({exported} OTLP batches received)");
        rates.push(rate);
    }
    println!();
    println!("ratio exported 100% / off: {:.2}", rates[1] / rates[0]);
    println!("ratio exported   1% / off: {:.2}", rates[2] / rates[0]);
    Ok(())
}

/// One configuration in a process of its own; prints its requests/s.
pub async fn run_mode(args: &[String]) -> anyhow::Result<()> {
    let index: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
    let (_, ratio, exported) = MODES[index.min(MODES.len() - 1)];
    let mut settings = Settings::from_env()?;
    settings.trace.endpoint = exported.then(|| args.get(1).cloned()).flatten();
    settings.trace.sample_ratio = ratio;
    let tracing = telemetry::init_tracing(&settings, telemetry::API_SERVICE);
    let rate = crate::tasks::get_rate(settings).await?;
    println!("{rate}");
    tracing.shutdown();
    Ok(())
}
