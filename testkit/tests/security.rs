//! Secrets at rest and hostile input (SPEC section 14, issue 18) against the real API,
//! worker, Postgres, Redis, SMTP capture and S3 store: one test per item of the checklist.
//!
//! A test that checks several cases collects every failing case first and fails once, naming
//! all of them, so one run shows the whole gap.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::presigning::PresigningConfig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tasklane_testkit::{PASSWORD, TestApp, email_address, token_in, wait_until};

const MAIL: Duration = Duration::from_secs(20);

/// About a megabyte of password: with the JSON around it the body stays under the default
/// 1 MiB limit, so it reaches the handler instead of being refused with 413.
fn huge_password() -> String {
    "x".repeat(1_000_000)
}

async fn body(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post("/api/v1/auth/login", &json!({ "email": email, "password": password }), None).await
}

/// `None` when `resp` is a 422 problem naming `field` (with `code`, when given); otherwise
/// what it was instead, for the test's list of failures.
async fn refused_naming(
    resp: reqwest::Response,
    field: &str,
    code: Option<&str>,
) -> Option<String> {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let named = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["field"] == field && code.is_none_or(|code| e["code"] == code));
    if status == StatusCode::UNPROCESSABLE_ENTITY && named {
        None
    } else {
        Some(format!("{status} {}", truncate(&text)))
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

/// Fails once with every case that went wrong.
fn assert_none_failed(failures: &[String], what: &str) {
    assert!(failures.is_empty(), "{what}:\n  {}", failures.join("\n  "));
}

/// A reset token for `email` from the captured reset email (a worker must be running).
async fn reset_token(app: &TestApp, email: &str, emails_before: usize) -> String {
    let resp = app.post("/api/v1/auth/forgot-password", &json!({ "email": email }), None).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mail = app.wait_for_emails(email, emails_before + 1, MAIL).await;
    let reset = mail
        .iter()
        .find(|m| m["subject"].as_str().unwrap_or_default().contains("Reset"))
        .expect("a reset email");
    token_in(reset)
}

// --- Passwords --------------------------------------------------------------------------

#[tokio::test]
async fn a_megabyte_of_password_is_422_naming_the_field_on_every_password_endpoint() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let huge = huge_password();
    let mut failures = Vec::new();

    let email = email_address();
    let resp =
        app.post("/api/v1/auth/register", &json!({ "email": email, "password": huge }), None).await;
    if let Some(got) = refused_naming(resp, "password", Some("too_long")).await {
        failures.push(format!("register password: {got}"));
    }

    let email = email_address();
    let session = app.register(&email).await;
    let token = session["access_token"].as_str().unwrap();
    // The known account and an unknown one: neither may cost an argon2 run.
    for who in [email.clone(), email_address()] {
        let resp = login(&app, &who, &huge).await;
        if let Some(got) = refused_naming(resp, "password", Some("too_long")).await {
            failures.push(format!("login password ({who}): {got}"));
        }
    }

    let reset = reset_token(&app, &email, 1).await;
    let resp = app
        .post("/api/v1/auth/reset-password", &json!({ "token": reset, "new_password": huge }), None)
        .await;
    if let Some(got) = refused_naming(resp, "new_password", Some("too_long")).await {
        failures.push(format!("reset-password new_password: {got}"));
    }

    for (field, body) in [
        (
            "current_password",
            json!({ "current_password": huge, "new_password": "a fresh long passphrase" }),
        ),
        ("new_password", json!({ "current_password": PASSWORD, "new_password": huge })),
    ] {
        let resp = app.post("/api/v1/me/password", &body, Some(token)).await;
        if let Some(got) = refused_naming(resp, field, Some("too_long")).await {
            failures.push(format!("me/password {field}: {got}"));
        }
    }
    assert_none_failed(&failures, "a megabyte of password must be refused before hashing");
    // And nothing changed: the account still signs in with its password.
    assert_eq!(login(&app, &email, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn stored_hashes_are_argon2id_with_owasp_parameters() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let id: uuid::Uuid = session["user"]["id"].as_str().unwrap().parse().unwrap();
    let hash: String = sqlx::query_scalar("select password_hash from users where id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    // $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
    let parts: Vec<&str> = hash.split('$').collect();
    assert_eq!(parts.len(), 6, "{hash}");
    assert_eq!((parts[1], parts[2]), ("argon2id", "v=19"), "{hash}");
    let params: Vec<(&str, u32)> = parts[3]
        .split(',')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap();
            (name, value.parse().unwrap())
        })
        .collect();
    assert_eq!(params, [("m", 19_456), ("t", 2), ("p", 1)], "{hash}");
    assert!(
        URL_SAFE_NO_PAD.decode(parts[4].replace('+', "-").replace('/', "_")).unwrap().len() >= 16
    );
}

#[tokio::test]
async fn the_policy_refuses_11_and_129_characters_and_accepts_12_and_128() {
    let app = TestApp::spawn().await;
    // Random hex: no dictionary word, so only the length rule decides.
    let random = |n: usize| {
        let mut out = String::new();
        while out.len() < n {
            let seed = tasklane_testkit::unique("password");
            out.push_str(&format!("{:x}", Sha256::digest(seed.as_bytes())));
        }
        out.truncate(n);
        out
    };
    let register = |password: String| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/auth/register",
                &json!({ "email": email_address(), "password": password }),
                None,
            )
            .await
        }
    };
    let mut failures = Vec::new();
    for (chars, code) in [(11, "too_short"), (129, "too_long")] {
        if let Some(got) =
            refused_naming(register(random(chars)).await, "password", Some(code)).await
        {
            failures.push(format!("{chars} characters: {got}"));
        }
    }
    // Characters, not bytes: 128 two-byte characters are 256 bytes and still fine.
    let accented: String = random(128).chars().map(|c| if c == 'a' { 'é' } else { c }).collect();
    for (what, password) in [("12", random(12)), ("128", random(128)), ("128 multi-byte", accented)]
    {
        let resp = register(password).await;
        let status = resp.status();
        if status != StatusCode::CREATED {
            failures.push(format!("{what} characters: {status} {}", resp.text().await.unwrap()));
        }
    }
    assert_none_failed(&failures, "the policy's length bounds");
}

#[tokio::test]
async fn login_takes_as_long_for_an_unknown_email_as_for_a_wrong_password() {
    let app = TestApp::spawn().await;
    // Four failures per known account and a fresh address per unknown sample: the
    // 5-failures-per-email throttle never answers early.
    const ACCOUNTS: usize = 8;
    const PER_ACCOUNT: usize = 4;
    let mut known = Vec::new();
    for _ in 0..ACCOUNTS {
        let email = email_address();
        app.register(&email).await;
        known.push(email);
    }
    // Warm up connections and the hashing pool.
    for _ in 0..3 {
        login(&app, &email_address(), "a wrong but long password").await;
    }
    let (mut known_ms, mut unknown_ms) = (Vec::new(), Vec::new());
    for round in 0..PER_ACCOUNT {
        for email in &known {
            // Interleaved, and alternating which goes first, so drift hits both alike.
            let samples = [(email.clone(), true), (email_address(), false)];
            let order: Vec<_> =
                if round % 2 == 0 { samples.to_vec() } else { samples.into_iter().rev().collect() };
            for (who, is_known) in order {
                let started = Instant::now();
                let resp = login(&app, &who, "a wrong but long password").await;
                let took = started.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{who}");
                if is_known { known_ms.push(took) } else { unknown_ms.push(took) }
            }
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (known_median, unknown_median) = (median(known_ms), median(unknown_ms));
    let ratio = unknown_median / known_median;
    eprintln!("login medians: unknown {unknown_median:.1} ms, wrong password {known_median:.1} ms");
    assert!(
        (0.5..=2.0).contains(&ratio),
        "unknown email {unknown_median:.1} ms vs wrong password {known_median:.1} ms (x{ratio:.2})"
    );
}

// --- Reset links ------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_reset_token_is_400_invalid_token() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    app.register(&email).await;
    app.wait_for_emails(&email, 1, MAIL).await;
    let token = reset_token(&app, &email, 1).await;
    let expired = sqlx::query(
        "update email_tokens set expires_at = now() - interval '1 second'
         where purpose = 'reset_password' and used_at is null",
    )
    .execute(&app.db)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(expired, 1);
    let resp = app
        .post(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "new_password": "a brand new passphrase for tasklane" }),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(resp).await["type"], "urn:tasklane:problem:invalid_token");
    assert_eq!(login(&app, &email, PASSWORD).await.status(), StatusCode::OK, "nothing changed");
}

#[tokio::test]
async fn the_reset_link_is_built_from_public_url_under_a_forged_host() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    app.register(&email).await;
    app.wait_for_emails(&email, 1, MAIL).await;
    let resp = app
        .client
        .post(app.url("/api/v1/auth/forgot-password"))
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "http")
        .header("forwarded", "host=evil.example;proto=http")
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mail = app.wait_for_emails(&email, 2, MAIL).await;
    let reset = mail
        .iter()
        .find(|m| m["subject"].as_str().unwrap_or_default().contains("Reset"))
        .expect("a reset email");
    let link =
        format!("{}/reset-password?token=", app.settings.public_url.as_str().trim_end_matches('/'));
    for part in ["text", "html"] {
        // The HTML part escapes `/` and `=` in attribute values.
        let content = reset[part]
            .as_str()
            .unwrap()
            .replace("&#x2f;", "/")
            .replace("&#x3d;", "=")
            .replace("&amp;", "&");
        assert!(content.contains(&link), "{part}: {content}");
        assert!(!content.contains("evil.example"), "{part}: {content}");
    }
}

// --- Access tokens ----------------------------------------------------------------------

/// A token over `claims` under `header`, signed with HMAC-SHA256 and `secret`.
fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let message = format!("{}.{}", encode(header), encode(claims));
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .unwrap();
    format!("{message}.{signature}")
}

/// An RSA public key as a server that used RS256 would publish it: the classic
/// algorithm-confusion attack signs HS256 with this text as the HMAC secret.
const PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC/b80E2ETeqk76Fz9wiWc4Ln4t
AlxjFWRrkKXyzf8L+nTcIfQyUVrOFkhcjwEHyNpOQsfnTk5Vz6PfPzeYxtwvOr//
rRiOpsiz8pRFOjzmYNCK/Z9vmNQhIJetInlW5S8l7zg797p2+f6H13fgl4BN8G+z
RxB82MSvnvmiZpDWIQIDAQAB
-----END PUBLIC KEY-----
";

#[tokio::test]
async fn correctly_signed_tokens_with_key_hints_other_types_or_issuers_are_401() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let access = session["access_token"].as_str().unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(access.split('.').nth(1).unwrap()).unwrap())
            .unwrap();
    let secret = app.settings.jwt_secret.expose_secret().as_bytes().to_vec();
    let issued = json!({ "alg": "HS256", "typ": "JWT" });

    // The forging works: the issued header over the same claims, re-signed, is accepted.
    let control = hs256(&issued, &claims, &secret);
    assert_eq!(app.get_as("/api/v1/me", &control).await.status(), StatusCode::OK);

    let mut wrong_iss = claims.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let cases = [
        ("kid", hs256(&json!({ "alg": "HS256", "typ": "JWT", "kid": "k1" }), &claims, &secret)),
        (
            "jku",
            hs256(
                &json!({ "alg": "HS256", "typ": "JWT", "jku": "https://evil.example/jwks.json" }),
                &claims,
                &secret,
            ),
        ),
        (
            "x5u",
            hs256(
                &json!({ "alg": "HS256", "typ": "JWT", "x5u": "https://evil.example/cert.pem" }),
                &claims,
                &secret,
            ),
        ),
        ("typ at+jwt", hs256(&json!({ "alg": "HS256", "typ": "at+jwt" }), &claims, &secret)),
        ("no typ", hs256(&json!({ "alg": "HS256" }), &claims, &secret)),
        ("wrong iss", hs256(&issued, &wrong_iss, &secret)),
        // An RS256 header over an HMAC signature with the right key: the algorithm is pinned.
        ("RS256 header", hs256(&json!({ "alg": "RS256", "typ": "JWT" }), &claims, &secret)),
        ("HS256 keyed with a PEM public key", hs256(&issued, &claims, PUBLIC_KEY_PEM.as_bytes())),
    ];
    let mut failures = Vec::new();
    for (name, token) in cases {
        let resp = app.get_as("/api/v1/me", &token).await;
        let status = resp.status();
        if status != StatusCode::UNAUTHORIZED
            || resp.headers().get("www-authenticate").is_none_or(|v| v != "Bearer")
        {
            failures.push(format!("{name}: {status}"));
        }
    }
    assert_none_failed(&failures, "forged headers and claims must be 401");
}

/// Decision (README, "Sign-out"): signing out ends the session at once, access token
/// included. An access token names its session (`sid`); once that session is revoked by
/// logout, a password change (other sessions), a reset or refresh-token reuse, the access
/// token is refused with 401 instead of living on for up to 15 minutes. Other sessions of
/// the same account are untouched.
#[tokio::test]
async fn logout_ends_the_access_token_of_that_session_and_no_other() {
    let app = TestApp::spawn().await;
    let email = email_address();
    let this = app.register(&email).await;
    let other = body(login(&app, &email, PASSWORD).await).await;
    let access = this["access_token"].as_str().unwrap();
    let other_access = other["access_token"].as_str().unwrap();
    assert_eq!(app.get_as("/api/v1/me", access).await.status(), StatusCode::OK);

    let resp = app
        .post("/api/v1/auth/logout", &json!({ "refresh_token": this["refresh_token"] }), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.get_as("/api/v1/me", other_access).await.status(),
        StatusCode::OK,
        "another session of the same account stays signed in"
    );
    let after = app.get_as("/api/v1/me", access).await;
    assert_eq!(
        after.status(),
        StatusCode::UNAUTHORIZED,
        "the signed-out session's access token must stop working at once"
    );
    assert_eq!(after.headers()["www-authenticate"], "Bearer");
}

// --- HTTP surface -----------------------------------------------------------------------

fn assert_security_headers(resp: &reqwest::Response, what: &str) {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{what}: no {name} header"))
            .to_owned()
    };
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("cache-control"), "no-store", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(resp.headers().contains_key("x-request-id"), "{what}");
}

#[tokio::test]
async fn a_non_json_content_type_on_login_is_415_problem_json() {
    let app = TestApp::spawn().await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "application/xml"] {
        let resp = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("content-type", content_type)
            .body(r#"{"email":"a@example.test","password":"correct horse battery staple"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{content_type}");
        assert_security_headers(&resp, content_type);
        let problem = body(resp).await;
        assert_eq!(problem["status"], 415, "{problem}");
        assert!(problem["request_id"].is_string(), "{problem}");
    }
}

#[tokio::test]
async fn real_401_and_422_responses_carry_the_security_headers() {
    let app = TestApp::spawn().await;
    let unauthorized = app.client.get(app.url("/api/v1/me")).send().await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    assert_security_headers(&unauthorized, "401 without a token");
    let bad_token = app.get_as("/api/v1/me", "not.a.jwt").await;
    assert_eq!(bad_token.status(), StatusCode::UNAUTHORIZED);
    assert_security_headers(&bad_token, "401 with a bad token");
    let wrong_password = login(&app, &email_address(), "a wrong but long password").await;
    assert_eq!(wrong_password.status(), StatusCode::UNAUTHORIZED);
    assert_security_headers(&wrong_password, "401 from login");

    let invalid = app
        .post("/api/v1/auth/register", &json!({ "email": "not-an-email", "password": "x" }), None)
        .await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_security_headers(&invalid, "422 from register");
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    let invalid = app.post("/api/v1/tasks", &json!({ "title": "   " }), Some(token)).await;
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_security_headers(&invalid, "422 from tasks");
}

#[tokio::test]
async fn a_nul_character_in_any_string_is_422_naming_the_field_never_500() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    let mut failures = Vec::new();

    let resp = login(&app, &format!("\u{0}x{}", email_address()), PASSWORD).await;
    if let Some(got) = refused_naming(resp, "email", None).await {
        failures.push(format!("POST /auth/login email: {got}"));
    }
    let resp = app
        .post(
            "/api/v1/auth/register",
            &json!({ "email": email_address(), "password": PASSWORD, "display_name": "Ada\u{0}Lovelace" }),
            None,
        )
        .await;
    if let Some(got) = refused_naming(resp, "display_name", None).await {
        failures.push(format!("POST /auth/register display_name: {got}"));
    }
    let resp = app
        .client
        .patch(app.url("/api/v1/me"))
        .bearer_auth(token)
        .json(&json!({ "display_name": "Ada\u{0}" }))
        .send()
        .await
        .unwrap();
    if let Some(got) = refused_naming(resp, "display_name", None).await {
        failures.push(format!("PATCH /me display_name: {got}"));
    }
    for (field, task) in [
        ("title", json!({ "title": "buy\u{0}milk" })),
        ("description", json!({ "title": "buy milk", "description": "two\u{0}litres" })),
    ] {
        let resp = app.post("/api/v1/tasks", &task, Some(token)).await;
        if let Some(got) = refused_naming(resp, field, None).await {
            failures.push(format!("POST /tasks {field}: {got}"));
        }
    }
    let resp = app
        .post("/api/v1/tasks/bulk", &json!({ "tasks": [{ "title": "a\u{0}b" }] }), Some(token))
        .await;
    if let Some(got) = refused_naming(resp, "tasks[0].title", None).await {
        failures.push(format!("POST /tasks/bulk tasks[0].title: {got}"));
    }
    let task =
        body(app.post("/api/v1/tasks", &json!({ "title": "buy milk" }), Some(token)).await).await;
    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/tasks/{}", task["id"].as_str().unwrap())))
        .bearer_auth(token)
        .header("if-match", format!("\"{}\"", task["version"]))
        .json(&json!({ "title": "buy\u{0}milk" }))
        .send()
        .await
        .unwrap();
    if let Some(got) = refused_naming(resp, "title", None).await {
        failures.push(format!("PATCH /tasks/{{id}} title: {got}"));
    }
    for param in ["q", "tag"] {
        let resp = app.get_as(&format!("/api/v1/tasks?{param}=a%00b"), token).await;
        if let Some(got) = refused_naming(resp, param, None).await {
            failures.push(format!("GET /tasks?{param}=a%00b: {got}"));
        }
    }
    assert_none_failed(&failures, "NUL must be refused before it reaches Postgres");
    // The account still works: nothing above broke the connection pool or the session.
    assert_eq!(app.get_as("/api/v1/me", token).await.status(), StatusCode::OK);
}

/// poem-openapi reads `false` for a string as `"false"`; the API refuses what its schema
/// forbids instead (400 naming the field), on every operation, signed in or not.
#[tokio::test]
async fn a_boolean_or_number_where_the_schema_says_string_is_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    let mut failures = Vec::new();
    for (path, request, field, auth) in [
        ("/api/v1/tasks", json!({ "title": false }), "title", Some(token)),
        ("/api/v1/tasks", json!({ "title": 12 }), "title", Some(token)),
        (
            "/api/v1/tasks/bulk",
            json!({ "tasks": [{ "title": true }] }),
            "tasks[0].title",
            Some(token),
        ),
        ("/api/v1/auth/forgot-password", json!({ "email": false }), "email", None),
        ("/api/v1/auth/logout", json!({ "refresh_token": false }), "refresh_token", None),
        ("/api/v1/auth/login", json!({ "email": 1, "password": PASSWORD }), "email", None),
    ] {
        let resp = app.post(path, &request, auth).await;
        let status = resp.status();
        let problem = body(resp).await;
        let named =
            problem["errors"][0]["field"] == field && problem["errors"][0]["code"] == "wrong_type";
        if status != StatusCode::BAD_REQUEST || !named {
            failures.push(format!("POST {path} {request}: {status} {problem}"));
        }
    }
    assert_none_failed(&failures, "a non-string for a string must be refused, not coerced");
    // Nothing was created on the way.
    let list = body(app.get_as("/api/v1/tasks", token).await).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
}

/// A NUL in an attachment's filename is refused like any other, not silently dropped.
#[tokio::test]
async fn a_nul_character_in_an_attachment_filename_is_422_naming_it() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    let task =
        body(app.post("/api/v1/tasks", &json!({ "title": "with a file" }), Some(token)).await)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let path = format!("/api/v1/tasks/{task}/attachments");
    let declared =
        json!({ "filename": "plan\u{0}.png", "content_type": "image/png", "size_bytes": 10 });
    let resp = app.post(&path, &declared, Some(token)).await;
    assert_none_failed(
        &refused_naming(resp, "filename", Some("nul_character"))
            .await
            .into_iter()
            .collect::<Vec<_>>(),
        "a NUL in a filename must be refused",
    );
    let list = body(app.get_as(&path, token).await).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "nothing was declared: {list}");
}

// --- Attachments ------------------------------------------------------------------------

#[tokio::test]
async fn the_store_refuses_a_presigned_put_after_its_expiry() {
    let app = TestApp::spawn().await;
    let s3 = tasklane_shared::storage::public_client(&app.settings.s3);
    let key = format!("security-tests/{}", tasklane_testkit::unique("expired"));
    let bytes = b"hello".to_vec();
    let presign = |start: SystemTime| {
        s3.put_object()
            .bucket(&app.settings.s3.bucket)
            .key(&key)
            .content_type("text/plain")
            .content_length(i64::try_from(bytes.len()).unwrap())
            .presigned(
                PresigningConfig::builder()
                    .start_time(start)
                    .expires_in(Duration::from_secs(60))
                    .build()
                    .unwrap(),
            )
    };
    let put = |request: aws_sdk_s3::presigning::PresignedRequest| {
        let mut put = app.client.put(request.uri()).body(bytes.clone());
        for (name, value) in request.headers() {
            if name != "content-length" {
                put = put.header(name, value);
            }
        }
        put.send()
    };
    // Signed an hour ago for 60 seconds: expired 59 minutes ago.
    let expired = presign(SystemTime::now() - Duration::from_secs(3600)).await.unwrap();
    let resp = put(expired).await.unwrap();
    let status = resp.status();
    assert_eq!(status, StatusCode::FORBIDDEN, "{}", resp.text().await.unwrap());
    let head = app.s3().head_object().bucket(&app.settings.s3.bucket).key(&key).send().await;
    assert!(head.is_err(), "nothing was stored");
    // The same request signed now works: the refusal is the expiry, not the request.
    let fresh = presign(SystemTime::now()).await.unwrap();
    assert_eq!(put(fresh).await.unwrap().status(), StatusCode::OK);
}

/// A real PNG, small.
fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Today the store answers a presigned GET without `X-Content-Type-Options`, and S3 has no
/// response-header override for it (only content type, disposition, cache control,
/// language, encoding and expiry): the fix is a design change (see the README / report).
#[tokio::test]
async fn attachment_downloads_carry_nosniff() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    let task =
        body(app.post("/api/v1/tasks", &json!({ "title": "with a file" }), Some(token)).await)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let bytes = png();
    let declared = app
        .post(
            &format!("/api/v1/tasks/{task}/attachments"),
            &json!({ "filename": "plan.png", "content_type": "image/png", "size_bytes": bytes.len() }),
            Some(token),
        )
        .await;
    assert_eq!(declared.status(), StatusCode::CREATED);
    let declared = body(declared).await;
    let id = declared["attachment"]["id"].as_str().unwrap().to_owned();
    let upload = &declared["upload"];
    let mut put = app.client.put(upload["url"].as_str().unwrap()).body(bytes.clone());
    for (name, value) in upload["headers"].as_object().unwrap() {
        if name != "content-length" {
            put = put.header(name, value.as_str().unwrap());
        }
    }
    assert_eq!(put.send().await.unwrap().status(), StatusCode::OK);
    let complete = app
        .post(&format!("/api/v1/tasks/{task}/attachments/{id}/complete"), &json!({}), Some(token))
        .await;
    assert_eq!(complete.status(), StatusCode::ACCEPTED);
    let ready = wait_until(Duration::from_secs(30), "the attachment to be ready", || async {
        let got =
            body(app.get_as(&format!("/api/v1/tasks/{task}/attachments/{id}"), token).await).await;
        matches!(got["status"].as_str(), Some("ready" | "rejected")).then_some(got)
    })
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");

    let mut failures = Vec::new();
    for link in ["download", "thumbnail"] {
        let Some(url) = ready[link]["url"].as_str() else { continue };
        let resp = app.client.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{link}");
        let nosniff = resp.headers().get("x-content-type-options");
        if nosniff.is_none_or(|v| v != "nosniff") {
            failures.push(format!("{link}: x-content-type-options {nosniff:?}"));
        }
        if link == "download" {
            assert_eq!(Sha256::digest(resp.bytes().await.unwrap()), Sha256::digest(&bytes));
        }
    }
    assert_none_failed(&failures, "every download must carry X-Content-Type-Options: nosniff");
}

// --- Secrets at rest --------------------------------------------------------------------

/// Every value of every Redis key under `prefix`, as text (hashes, lists, sets, sorted
/// sets and streams flattened), keyed by the key's name.
async fn redis_contents(app: &TestApp, prefix: &str) -> Vec<(String, String)> {
    let client = redis::Client::open(app.settings.redis_url.expose_secret()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.unwrap();
        let mut command = match kind.as_str() {
            "string" => redis::cmd("GET"),
            "hash" => redis::cmd("HGETALL"),
            "list" => redis::cmd("LRANGE"),
            "set" => redis::cmd("SMEMBERS"),
            "zset" => redis::cmd("ZRANGE"),
            "stream" => redis::cmd("XRANGE"),
            "none" => continue, // expired between SCAN and TYPE
            other => panic!("{key}: a Redis type this test cannot read: {other}"),
        };
        command.arg(&key);
        match kind.as_str() {
            "list" => {
                command.arg(0).arg(-1);
            }
            "zset" => {
                command.arg(0).arg(-1).arg("WITHSCORES");
            }
            "stream" => {
                command.arg("-").arg("+");
            }
            _ => {}
        }
        let value: redis::Value = command.query_async(&mut conn).await.unwrap();
        let mut text = String::new();
        flatten(&value, &mut text);
        out.push((key, text));
    }
    out
}

fn flatten(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        redis::Value::SimpleString(s) => out.push_str(s),
        redis::Value::Int(i) => out.push_str(&i.to_string()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                flatten(item, out);
                out.push('\n');
            }
        }
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                out.push('=');
                flatten(v, out);
                out.push('\n');
            }
        }
        other => out.push_str(&format!("{other:?}")),
    }
}

/// Where each secret shows up in `haystacks` (name, content).
fn leaks(secrets: &[(&str, String)], haystacks: &[(String, String)], place: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (what, secret) in secrets {
        // Also the forms a secret might be stored in without being "raw" text.
        let forms = [secret.clone(), URL_SAFE_NO_PAD.encode(secret.as_bytes())];
        for (name, content) in haystacks {
            if forms.iter().any(|form| content.contains(form.as_str())) {
                found.push(format!("{what} in {place} {name}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn no_raw_reset_or_verification_token_is_stored_in_the_outbox_redis_or_admin_api() {
    let admin_email = email_address();
    let listed = admin_email.clone();
    let app = TestApp::spawn_with(move |s| s.auth.admin_emails = vec![listed]).await;
    let email = email_address();
    let new_password = "a brand new passphrase nobody stores";

    // No worker yet: the outbox keeps every row until a relay moves it to Redis.
    app.register(&email).await;
    let resp = app.post("/api/v1/auth/forgot-password", &json!({ "email": email }), None).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let outbox: Vec<(String, String)> =
        sqlx::query_as("select id::text, row_to_json(o)::text from outbox o")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(outbox.len() >= 2, "verification and reset jobs wait in the outbox: {outbox:?}");

    let _worker = app.spawn_worker().await;
    let mail = app.wait_for_emails(&email, 2, MAIL).await;
    let subject = |m: &Value| m["subject"].as_str().unwrap_or_default().to_owned();
    let verify = token_in(mail.iter().find(|m| !subject(m).contains("Reset")).unwrap());
    let reset = token_in(mail.iter().find(|m| subject(m).contains("Reset")).unwrap());
    // Used once, so a stored copy would be useless to an attacker only after this point.
    let resp = app
        .post(
            "/api/v1/auth/reset-password",
            &json!({ "token": reset, "new_password": new_password }),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    app.wait_for_emails(&email, 3, MAIL).await; // "password changed"
    let admin = app.register_verified(&admin_email).await;
    let admin_token = admin["access_token"].as_str().unwrap();
    wait_until(MAIL, "the outbox drained", || async {
        (app.outbox_len().await == 0).then_some(())
    })
    .await;

    let secrets = [
        ("verification token", verify),
        ("reset token", reset),
        ("password", PASSWORD.to_owned()),
        ("new password", new_password.to_owned()),
        ("access token", admin_token.to_owned()),
    ];
    let mut found = leaks(&secrets, &outbox, "outbox row");

    let redis = redis_contents(&app, &app.settings.redis_prefix).await;
    assert!(!redis.is_empty(), "the jobs left records under {}", app.settings.redis_prefix);
    found.extend(leaks(&secrets, &redis, "Redis key"));

    let mut admin_api = Vec::new();
    for state in ["pending", "running", "scheduled", "done", "dead"] {
        for queue in ["emails", "uploads", "maintenance"] {
            let path = format!("/api/v1/admin/jobs?queue={queue}&state={state}&limit=100");
            let resp = app.get_as(&path, admin_token).await;
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            let page = body(resp).await;
            for job in page["data"].as_array().unwrap() {
                let id = job["id"].as_str().unwrap();
                let detail = app.get_as(&format!("/api/v1/admin/jobs/{id}"), admin_token).await;
                admin_api.push((format!("GET /admin/jobs/{id}"), detail.text().await.unwrap()));
            }
            admin_api.push((path, page.to_string()));
        }
    }
    assert!(admin_api.iter().any(|(p, _)| p.starts_with("GET /admin/jobs/")), "jobs were listed");
    found.extend(leaks(&secrets, &admin_api, "admin API"));
    assert_none_failed(&found, "secrets at rest (SPEC section 14)");
}
