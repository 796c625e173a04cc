//! What the benchmarks measure Tasklane against or with: `redis-benchmark`, and the CPU time
//! Redis and this process' children spent.

pub(crate) async fn redis_benchmark_lpush(url: &url::Url) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            url.host_str().unwrap_or("127.0.0.1"),
            "-p",
            &url.port().unwrap_or(6379).to_string(),
        ])
        .args(["-t", "lpush", "-n", "200000", "-q"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    // "LPUSH: 98765.43 requests per second, p50=0.263 msec"
    let rate = text
        .rsplit("LPUSH:")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark output: {text}"))?;
    Ok(rate)
}

/// Seconds of CPU Redis used since it started, per node (one, unnamed, on a single Redis).
pub(crate) async fn redis_cpu(
    conn: &mut tasklane_shared::redis::Conn,
) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let info: redis::Value = redis::cmd("INFO").arg("cpu").query_async(conn).await?;
    let reports: Vec<(String, String)> = match redis::from_redis_value_ref::<String>(&info) {
        Ok(single) => vec![(String::new(), single)],
        Err(_) => redis::from_redis_value::<std::collections::HashMap<String, String>>(info)?
            .into_iter()
            .collect(),
    };
    let field = |report: &str, name: &str| {
        report
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(reports
        .into_iter()
        .map(|(node, r)| (node, field(&r, "used_cpu_sys") + field(&r, "used_cpu_user")))
        .collect())
}

/// Seconds of CPU Redis used since `before` (from [`redis_cpu`]): over every node, and on
/// the busiest one.
pub(crate) async fn redis_cpu_since(
    conn: &mut tasklane_shared::redis::Conn,
    before: &std::collections::HashMap<String, f64>,
) -> anyhow::Result<(f64, f64)> {
    let after = redis_cpu(conn).await?;
    let used = |node: &String| after[node] - before.get(node).copied().unwrap_or(0.0);
    Ok((after.keys().map(used).sum(), after.keys().map(used).fold(0.0, f64::max)))
}

/// A drain's rate, and the CPU Redis spent on it: over all nodes, and on the busiest one
/// (on a cluster, the master that caps it when every node has a core of its own).
pub(crate) struct Drained {
    pub rate: f64,
    pub redis_s: f64,
    pub busiest_node_s: f64,
}

/// Seconds of CPU this process' reaped children used (`cutime` + `cstime`, /proc/self/stat).
pub(crate) fn children_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // cutime and cstime are fields 16 and 17 of the whole line: 13 and 14 here.
    Ok((ticks(13) + ticks(14)) / 100.0)
}
