//! The hot reads (`GET /me`, a task, the first page of tasks) answered from an instance's
//! memory before the routes: the answer is the route's own, they are counted, and a write
//! through another instance is seen by the next one. Each test runs with a log filter that
//! writes request lines (the hot read runs inside the request's span) and with one that
//! writes none (it runs without a span).

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use tasklane_testkit::{TestApp, email_address, wait_until};

/// Announcements cross instances through Redis pub/sub: well under this.
const HEARD: Duration = Duration::from_secs(3);
const ORIGIN: &str = "https://app.example";

/// The log filters: one that writes a line per request, one that writes none.
const FILTERS: [&str; 2] = ["info", "warn"];

async fn spawn(filter: &str) -> TestApp {
    TestApp::spawn_with(|s| {
        s.log_filter = filter.into();
        s.cors_origins = vec![ORIGIN.into()];
    })
    .await
}

/// A new user's access token, and the path of the one task they created.
async fn user_with_task(app: &TestApp) -> (String, String) {
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap().to_owned();
    let created = app.post("/api/v1/tasks", &json!({ "title": "first" }), Some(&token)).await;
    let task: Value = created.json().await.unwrap();
    (token, format!("/api/v1/tasks/{}", task["id"].as_str().unwrap()))
}

async fn get(app: &TestApp, url: &str, token: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = app.client.get(url).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    Answer { status, headers, body: resp.bytes().await.unwrap().to_vec() }
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    /// The headers that do not differ from one request to the next.
    fn lasting_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<_> = self
            .headers
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "x-request-id" | "date"))
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        headers
    }
}

/// The value of the counter `name` of the series with `labels` in the instance's metrics.
async fn counter(app: &TestApp, name: &str, labels: &str) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter(|line| labels.split(',').all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn hot_reads(app: &TestApp) -> u64 {
    counter(app, "http_hot_reads_total", "").await
}

#[tokio::test]
async fn a_hot_read_answers_exactly_as_its_route_does() {
    for filter in FILTERS {
        let app = spawn(filter).await;
        let (token, task) = user_with_task(&app).await;
        let reads = [("/api/v1/me", "/api/v1/me"), (&task, "/api/v1/tasks/:param0")];
        let reads = reads.into_iter().chain([("/api/v1/tasks", "/api/v1/tasks")]);
        for (path, route) in reads {
            let url = app.url(path);
            let labels = format!("route=\"{route}\",status=\"200\"");
            let counted = counter(&app, "http_requests_total", &labels).await;
            // The first read fills the caches; a read with a query goes the full way.
            let mut oks = u64::from(get(&app, &url, &token, &[]).await.status == StatusCode::OK);
            let asks: [&[(&str, &str)]; 3] =
                [&[], &[("origin", ORIGIN)], &[("if-none-match", "\"1\"")]];
            for headers in asks {
                let before = hot_reads(&app).await;
                let hot = get(&app, &url, &token, headers).await;
                assert_eq!(hot_reads(&app).await, before + 1, "{filter}: {path} is a hot read");
                let routed = get(&app, &format!("{url}?"), &token, headers).await;
                assert_eq!(hot_reads(&app).await, before + 1, "{filter}: {path}? is not");

                assert_eq!(hot.status, routed.status, "{filter}: {path} {headers:?}");
                assert_eq!(hot.lasting_headers(), routed.lasting_headers(), "{filter}: {path}");
                assert_eq!(hot.body, routed.body, "{filter}: {path} {headers:?}");
                assert!(hot.headers.contains_key("x-request-id"));
                oks += 2 * u64::from(hot.status == StatusCode::OK);
            }
            // Both are one series of the request metrics, under the route's pattern.
            let now = counter(&app, "http_requests_total", &labels).await;
            assert_eq!(now - counted, oks, "{filter}: {path}");
        }
        let task_304 = get(&app, &app.url(&task), &token, &[("if-none-match", "\"1\"")]).await;
        assert_eq!(task_304.status, StatusCode::NOT_MODIFIED, "the ETag matched");
    }
}

#[tokio::test]
async fn what_is_not_held_goes_the_full_way() {
    for filter in FILTERS {
        let app = spawn(filter).await;
        let (token, task) = user_with_task(&app).await;
        let before = hot_reads(&app).await;
        // Never read before: the task and the page are misses, answered by the routes.
        for path in [task.as_str(), "/api/v1/tasks"] {
            let miss = get(&app, &app.url(path), &token, &[]).await;
            assert_eq!(miss.headers["x-cache"], "miss", "{filter}: {path}");
        }
        // No token, a token that does not verify, a task that is not there.
        let anonymous = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
        let forged = get(&app, &app.url("/api/v1/me"), &format!("{token}x"), &[]).await;
        assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
        let gone = format!("/api/v1/tasks/{}", uuid::Uuid::now_v7());
        assert_eq!(get(&app, &app.url(&gone), &token, &[]).await.status, StatusCode::NOT_FOUND);
        assert_eq!(hot_reads(&app).await, before, "{filter}: none of them was answered early");
    }
}

#[tokio::test]
async fn a_write_through_another_instance_is_seen_by_the_next_hot_read() {
    for filter in FILTERS {
        let app = spawn(filter).await;
        let other = app.spawn_instance().await;
        let (token, task) = user_with_task(&app).await;
        let read = |path: String| {
            let (app, token) = (&app, &token);
            async move {
                let before = hot_reads(app).await;
                let answer = get(app, &app.url(&path), token, &[]).await;
                assert_eq!(answer.status, StatusCode::OK, "{path}");
                let hot = hot_reads(app).await > before;
                (serde_json::from_slice::<Value>(&answer.body).unwrap(), hot)
            }
        };
        for path in ["/api/v1/me", &task, "/api/v1/tasks"] {
            read(path.to_owned()).await;
            assert!(read(path.to_owned()).await.1, "{filter}: {path} is held");
        }

        // A task changed and one created elsewhere: the very next hot read sees both.
        let retitle = app.client.patch(format!("{other}{task}")).bearer_auth(&token);
        let retitle = retitle.header("if-match", "\"1\"").json(&json!({ "title": "changed" }));
        assert_eq!(retitle.send().await.unwrap().status(), StatusCode::OK);
        assert_eq!(read(task.clone()).await.0["title"], "changed", "{filter}");
        assert!(read(task.clone()).await.1, "{filter}: the changed task is held again");
        read("/api/v1/tasks".into()).await;
        assert!(read("/api/v1/tasks".into()).await.1, "{filter}: the new page is held");
        let create = app.client.post(format!("{other}/api/v1/tasks")).bearer_auth(&token);
        let create = create.json(&json!({ "title": "second" }));
        assert_eq!(create.send().await.unwrap().status(), StatusCode::CREATED);
        let (page, _) = read("/api/v1/tasks".into()).await;
        assert_eq!(page["data"][0]["title"], "second", "{filter}");

        // The profile changed elsewhere: seen as soon as the change is announced.
        let patch = app.client.patch(format!("{other}/api/v1/me")).bearer_auth(&token);
        let patch = patch.json(&json!({ "display_name": "Ada" }));
        assert_eq!(patch.send().await.unwrap().status(), StatusCode::OK);
        wait_until(HEARD, "the first instance to serve the new profile", || async {
            (read("/api/v1/me".into()).await.0["display_name"] == "Ada").then_some(())
        })
        .await;
        assert!(read("/api/v1/me".into()).await.1, "{filter}: the new profile is held");
    }
}
