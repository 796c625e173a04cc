//! The upload benchmark: a 25 MiB PNG through the whole attachment path (presigned PUT,
//! `complete`, `process_upload` in a real worker process), timed from `complete` to `ready`,
//! with the worker's peak memory (`VmHWM`). Baselines from the same run: hashing the same
//! bytes in memory, and the worker's peak memory before any upload.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tasklane_shared::config::Settings;

const RUNS: usize = 3;
/// Just under 25 MiB of RGB noise, which PNG cannot compress.
const SIDE: u32 = 2_950;

pub async fn run() -> anyhow::Result<()> {
    let mut settings = Settings::from_env()?;
    settings.api_addr = "127.0.0.1:0".parse()?;
    settings.redis_prefix = format!("bench_{}", uuid::Uuid::now_v7().simple());
    let db = sqlx::postgres::PgPoolOptions::new()
        .connect(secrecy::ExposeSecret::expose_secret(&settings.database_url))
        .await?;
    tasklane_shared::db::migrate(&db).await?;
    let png = noise_png(SIDE);
    println!(
        "# upload benchmark ({RUNS} runs of a {:.1} MiB {SIDE}x{SIDE} PNG)",
        png.len() as f64 / 1048576.0
    );

    let hashing = Instant::now();
    let digest = format!("{:x}", Sha256::digest(&png));
    let hash_time = hashing.elapsed();

    let app = tasklane_api::app::Application::build(settings.clone()).await?;
    let base = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let worker_bin = std::env::current_exe()?.with_file_name("tasklane-worker");
    let mut worker = tokio::process::Command::new(worker_bin)
        .env("TASKLANE_REDIS_PREFIX", &settings.redis_prefix)
        .env("TASKLANE_WORKER_ADDR", "127.0.0.1:0")
        .kill_on_drop(true)
        .spawn()?;
    let pid = worker.id().ok_or_else(|| anyhow::anyhow!("worker exited"))?;

    let client = reqwest::Client::new();
    let session: serde_json::Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&serde_json::json!({ "email": format!("up_{}@example.test", uuid::Uuid::now_v7().simple()), "password": "correct horse battery staple" }))
        .send()
        .await?
        .json()
        .await?;
    let token = session["access_token"].as_str().unwrap_or_default().to_owned();
    let task: serde_json::Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "title": "upload benchmark" }))
        .send()
        .await?
        .json()
        .await?;
    let task = task["id"].as_str().unwrap_or_default().to_owned();
    // The worker is up and idle once its readiness answers; its peak so far is the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_peak = peak_kib(pid)?;

    let mut times = Vec::new();
    for _ in 0..RUNS {
        let declared: serde_json::Value = client
            .post(format!("{base}/api/v1/tasks/{task}/attachments"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "filename": "noise.png", "content_type": "image/png", "size_bytes": png.len() }))
            .send()
            .await?
            .json()
            .await?;
        let id = declared["attachment"]["id"].as_str().unwrap_or_default().to_owned();
        let mut put =
            client.put(declared["upload"]["url"].as_str().unwrap_or_default()).body(png.clone());
        for (name, value) in declared["upload"]["headers"].as_object().into_iter().flatten() {
            if name != "content-length" {
                put = put.header(name, value.as_str().unwrap_or_default());
            }
        }
        anyhow::ensure!(put.send().await?.status().is_success(), "upload refused");
        let started = Instant::now();
        let completed = client
            .post(format!("{base}/api/v1/tasks/{task}/attachments/{id}/complete"))
            .bearer_auth(&token)
            .send()
            .await?;
        anyhow::ensure!(completed.status() == 202, "complete: {}", completed.status());
        loop {
            let body: serde_json::Value = client
                .get(format!("{base}/api/v1/tasks/{task}/attachments/{id}"))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            match body["status"].as_str() {
                Some("ready") => {
                    anyhow::ensure!(body["sha256"] == digest.as_str(), "wrong digest");
                    break;
                }
                Some("rejected") => anyhow::bail!("rejected: {body}"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        times.push(started.elapsed());
    }
    let peak = peak_kib(pid)?;
    worker.kill().await?;

    times.sort();
    let median = times[times.len() / 2];
    println!("baseline: SHA-256 of the bytes in memory           {}", crate::ms(hash_time));
    println!(
        "complete -> ready (median of {RUNS})                 {}  (runs: {})",
        crate::ms(median),
        times.iter().map(|t| crate::ms(*t)).collect::<Vec<_>>().join(", ")
    );
    println!(
        "ratio processing / in-memory hash                  {:.1}",
        median.as_secs_f64() / hash_time.as_secs_f64()
    );
    println!(
        "worker peak RSS idle (baseline)                    {:.1} MiB",
        idle_peak as f64 / 1024.0
    );
    println!("worker peak RSS after the uploads                  {:.1} MiB", peak as f64 / 1024.0);
    println!(
        "peak added by processing / file size               {:.2}",
        (peak - idle_peak) as f64 * 1024.0 / png.len() as f64
    );
    Ok(())
}

/// A PNG of RGB noise (xorshift), `side` pixels square.
fn noise_png(side: u32) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let [r, g, b, ..] = state.to_le_bytes();
        image::Rgb([r, g, b])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).map(|()| out.into_inner()).unwrap_or_default()
}

/// The process's peak resident memory in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for {pid}"))
}
