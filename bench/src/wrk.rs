//! wrk, the load generator of the hot-path benchmarks: a separate C process, so the server
//! is measured from outside as a client sees it, and a Rust client's own cost (which the
//! in-process loops share the cores with) stays out of the figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub rate: f64,
    pub p99: Duration,
    /// Answers outside 2xx/3xx plus socket errors: a run with any is not a figure.
    pub errors: u64,
}

/// One wrk run against `url`: `connections` connections on 2 threads for `duration`,
/// with `script` (a Lua file setting the method, body and headers) when given.
pub async fn run(
    url: &str,
    connections: usize,
    duration: Duration,
    script: Option<&Path>,
) -> anyhow::Result<Load> {
    let mut command = tokio::process::Command::new("wrk");
    command
        .args(["-t2", &format!("-c{connections}"), &format!("-d{}s", duration.as_secs())])
        .args(["--latency", "--timeout", "5s"]);
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    let output = command.arg(url).output().await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    parse(&text).ok_or_else(|| anyhow::anyhow!("cannot read wrk's output:\n{text}"))
}

/// A Lua script for wrk: every request is `method` with `headers` and `body`.
pub fn script(
    dir: &Path,
    name: &str,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut lua = format!("wrk.method = {}\n", quote(method));
    for (name, value) in headers {
        lua.push_str(&format!("wrk.headers[{}] = {}\n", quote(name), quote(value)));
    }
    if let Some(body) = body {
        lua.push_str(&format!("wrk.body = {}\n", quote(body)));
    }
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, lua)?;
    Ok(path)
}

fn parse(text: &str) -> Option<Load> {
    let mut load = Load { rate: 0.0, p99: Duration::ZERO, errors: 0 };
    let mut rate = None;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rate = value.trim().parse().ok();
        } else if let Some(value) = line.strip_prefix("99%") {
            load.p99 = duration(value.trim())?;
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += value.trim().parse::<u64>().ok()?;
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in value.split(',') {
                load.errors += part.split_whitespace().nth(1)?.parse::<u64>().ok()?;
            }
        }
    }
    load.rate = rate?;
    Some(load)
}

/// wrk's durations: `812.00us`, `1.52ms`, `2.01s`.
fn duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rate_p99_and_errors() {
        let out = "Running 5s test @ http://127.0.0.1:1/hello\n  2 threads and 32 connections\n\
                   Latency Distribution\n     50%  310.00us\n     99%    1.52ms\n\
                   401213 requests in 5.00s, 40.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n\
                   Non-2xx or 3xx responses: 4\nRequests/sec:  80242.60\nTransfer/sec:      8.00MB\n";
        let load = parse(out).unwrap();
        assert_eq!(load.rate, 80242.60);
        assert_eq!(load.p99, Duration::from_micros(1520));
        assert_eq!(load.errors, 7);
    }
}
