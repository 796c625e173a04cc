//! The console end to end, in Debian's Chromium driven by Playwright (`testkit/e2e/`): this
//! test builds the world (an API with an admin, dead jobs, two real worker processes on
//! the real stack, one started mid-run), then runs `node testkit/e2e/console.e2e.mjs`,
//! which drives the page as an operator would and exits 0 when every step held.
//!
//! The script prints `need-second-worker` on stdout when it wants the second worker; its
//! other output goes to stderr, shown with the test's. Screenshots land in
//! `target/debug/console-e2e/` (the README's come from there, copied by hand into
//! `docs/console/`; nothing reads them back).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tasklane_testkit::jobs::dead_emails;
use tasklane_testkit::{PASSWORD, TestApp};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::*;

/// How long the whole browser run may take.
const E2E_DEADLINE: Duration = Duration::from_secs(240);
const DEAD_JOBS: usize = 3;

/// Where the screenshots go: beside the test binaries, never into the source tree.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("console-e2e")
}

#[tokio::test]
async fn an_admin_operates_the_fleet_from_the_console_in_chromium() {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core/package.json").exists(),
        "playwright-core is not installed in {}: scripts/test runs `npm ci` there",
        e2e.display()
    );
    let admin = email_address();
    let listed = admin.clone();
    let app = TestApp::spawn_with(move |s| s.auth.admin_emails = vec![listed]).await;
    let worker = app.spawn_worker().await;
    app.register_verified(&admin).await;
    worker.stop().await.unwrap();
    let store = app.spawn_store();
    let dead = dead_emails(&app, &store, DEAD_JOBS, "SMTP 550: mailbox unavailable").await;

    let mut workers = vec![app.worker_process().spawn().unwrap()];
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg(e2e.join("console.e2e.mjs"))
        .env("CONSOLE_URL", app.url("/console"))
        .env("API_URL", &app.address)
        .env("ADMIN_EMAIL", &admin)
        .env("ADMIN_PASSWORD", PASSWORD)
        .env("MAIL_API_URL", std::env::var("MAIL_API_URL").expect("scripts/test sets it"))
        .env("DEAD_JOBS", DEAD_JOBS.to_string())
        .env("SCREENSHOT_DIR", &shots)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (Node.js is needed, as for MailDev)");
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("e2e> {line}");
            if line.trim() == "need-second-worker" {
                workers.push(app.worker_process().spawn().unwrap());
            }
        }
        node.wait().await.unwrap()
    };
    let status = tokio::time::timeout(E2E_DEADLINE, run).await.expect("the browser run ends");
    assert!(status.success(), "console.e2e.mjs failed ({status}); see its output above");
    assert_eq!(workers.len(), 2, "the script asked for the second worker");

    // What the page did, the API saw: the dead set retried, a schedule run, each audited.
    for id in &dead {
        let job = store.job(Queue::Emails, id).await.unwrap().unwrap();
        assert_ne!(job.state, JobState::Dead, "{id} was retried");
    }
    let audit = app.get_as("/api/v1/admin/audit", &admin_token(&app, &admin).await).await;
    let audit: Value = audit.json().await.unwrap();
    let actions: Vec<&str> =
        audit["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["queue.pause", "queue.resume", "jobs.retry", "schedule.run"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    for worker in &mut workers {
        worker.start_kill().unwrap();
    }
}

async fn admin_token(app: &TestApp, email: &str) -> String {
    let resp = app
        .post("/api/v1/auth/login", &json!({ "email": email, "password": PASSWORD }), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}
