//! Accounts and auth (SPEC section 4) against the real API, worker, Postgres, Redis and
//! SMTP capture.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tasklane_testkit::{PASSWORD, TestApp, email_address, token_in};

const MAIL: Duration = Duration::from_secs(20);

async fn body(resp: reqwest::Response) -> Value {
    resp.json().await.expect("JSON body")
}

async fn login(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.post("/api/v1/auth/login", &json!({ "email": email, "password": password }), None).await
}

#[tokio::test]
async fn register_signs_in_and_sends_a_verification_link_built_from_public_url() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let resp = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .json(&json!({ "email": format!("  {}  ", email.to_uppercase()), "password": PASSWORD, "display_name": "Ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let session = body(resp).await;
    assert_eq!(session["user"]["email"], email.as_str(), "normalised");
    assert_eq!(session["user"]["email_verified"], false);
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);

    let mail = app.wait_for_emails(&email, 1, MAIL).await;
    let text = mail[0]["text"].as_str().unwrap();
    let link =
        format!("{}/verify-email?token=", app.settings.public_url.as_str().trim_end_matches('/'));
    assert!(text.contains(&link), "{text}");
    assert!(!text.contains("evil.example"));
    assert!(mail[0]["html"].as_str().unwrap().contains("Confirm my email address"));

    let token = token_in(&mail[0]);
    let resp = app.post("/api/v1/auth/verify-email", &json!({ "token": token }), None).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let me = body(app.get_as("/api/v1/me", session["access_token"].as_str().unwrap()).await).await;
    assert_eq!(me["email_verified"], true);
    let again = app.post("/api/v1/auth/verify-email", &json!({ "token": token }), None).await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST, "a verification token works once");
}

#[tokio::test]
async fn duplicate_email_is_409_case_insensitively() {
    let app = TestApp::spawn().await;
    let email = email_address();
    app.register(&email).await;
    let resp = app
        .post(
            "/api/v1/auth/register",
            &json!({ "email": email.to_uppercase(), "password": PASSWORD }),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn weak_passwords_and_bad_emails_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    let email = email_address();
    for (password, code) in [
        ("short", "too_short"),
        (&*"x".repeat(129), "too_long"),
        ("password12345", "too_weak"),
        (email.as_str(), "same_as_email"),
    ] {
        let resp = app
            .post("/api/v1/auth/register", &json!({ "email": email, "password": password }), None)
            .await;
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{password}");
        let problem = body(resp).await;
        assert_eq!(problem["errors"][0]["field"], "password");
        assert_eq!(problem["errors"][0]["code"], code, "{problem}");
        assert!(problem["request_id"].is_string());
    }
    let resp = app
        .post(
            "/api/v1/auth/register",
            &json!({ "email": "not-an-email", "password": PASSWORD }),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body(resp).await["errors"][0]["field"], "email");
}

#[tokio::test]
async fn login_failures_get_one_generic_401() {
    let app = TestApp::spawn().await;
    let email = email_address();
    app.register(&email).await;
    let wrong = login(&app, &email, "a wrong but long password").await;
    let unknown = login(&app, &email_address(), PASSWORD).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.headers()["www-authenticate"], "Bearer");
    let (mut a, mut b) = (body(wrong).await, body(unknown).await);
    a.as_object_mut().unwrap().remove("request_id");
    b.as_object_mut().unwrap().remove("request_id");
    assert_eq!(a, b, "the same body for unknown email and wrong password");
    assert_eq!(login(&app, &email.to_uppercase(), PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn five_failures_lock_the_email_and_ip_and_a_spoofed_forwarded_for_does_not_help() {
    let app = TestApp::spawn().await;
    let email = email_address();
    app.register(&email).await;
    for _ in 0..5 {
        assert_eq!(
            login(&app, &email, "a wrong but long password").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let locked = login(&app, &email, PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS, "even the right password waits");
    let retry_after: u64 = locked.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");

    // We are not a trusted proxy, so X-Forwarded-For is ignored.
    let spoofed = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "198.51.100.77")
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another email from the same address is not affected.
    let other = email_address();
    app.register(&other).await;
    assert_eq!(login(&app, &other, PASSWORD).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_gets_its_own_counter() {
    let app =
        TestApp::spawn_with(|s| s.auth.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
            .await;
    let email = email_address();
    app.register(&email).await;
    let from = |ip: &'static str, password: &'static str| {
        app.client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", ip)
            .json(&json!({ "email": email, "password": password }))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(
            from("203.0.113.1", "a wrong but long password").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        from("203.0.113.1", PASSWORD).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(from("203.0.113.2", PASSWORD).await.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let first = session["refresh_token"].as_str().unwrap();
    let resp = app.post("/api/v1/auth/refresh", &json!({ "refresh_token": first }), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let rotated = body(resp).await;
    let second = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(first, second);

    let reuse = app.post("/api/v1/auth/refresh", &json!({ "refresh_token": first }), None).await;
    assert_eq!(reuse.status(), StatusCode::UNAUTHORIZED);
    let newer = app.post("/api/v1/auth/refresh", &json!({ "refresh_token": second }), None).await;
    assert_eq!(newer.status(), StatusCode::UNAUTHORIZED, "the newer token is revoked too");
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["refresh_token"].as_str().unwrap();
    assert_eq!(
        app.post("/api/v1/auth/logout", &json!({ "refresh_token": token }), None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.post("/api/v1/auth/refresh", &json!({ "refresh_token": token }), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.post("/api/v1/auth/logout", &json!({ "refresh_token": "nonsense" }), None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
}

fn forge(app: &TestApp, header: &Value, claims: &Value, sign: bool) -> String {
    let encode = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let message = format!("{}.{}", encode(header), encode(claims));
    if !sign {
        return format!("{message}.");
    }
    let key =
        jsonwebtoken::EncodingKey::from_secret(app.settings.jwt_secret.expose_secret().as_bytes());
    let header: jsonwebtoken::Header = serde_json::from_value(header.clone()).unwrap();
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test]
async fn forged_tampered_and_foreign_tokens_are_401() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(app.get_as("/api/v1/me", access).await.status(), StatusCode::OK);

    let parts: Vec<&str> = access.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();

    let none = forge(&app, &json!({ "alg": "none", "typ": "JWT" }), &claims, false);
    let mut admin = claims.clone();
    admin["role"] = json!("admin");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).unwrap()),
        parts[2]
    );
    claims["aud"] = json!("someone-else");
    let wrong_aud = forge(&app, &json!({ "alg": "HS256", "typ": "JWT" }), &claims, true);
    claims["aud"] = json!(app.settings.auth.jwt_audience);
    claims["exp"] = json!(chrono::Utc::now().timestamp() - 60);
    let expired = forge(&app, &json!({ "alg": "HS256", "typ": "JWT" }), &claims, true);
    let refresh = session["refresh_token"].as_str().unwrap();

    for (name, token) in [
        ("alg none", none.as_str()),
        ("tampered", &tampered),
        ("wrong aud", &wrong_aud),
        ("expired", &expired),
        ("refresh token", refresh),
    ] {
        let resp = app.get_as("/api/v1/me", token).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer", "{name}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json", "{name}");
    }
    assert_eq!(
        app.client.get(app.url("/api/v1/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn forgot_password_answers_the_same_and_mails_only_real_accounts() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    app.register(&email).await;
    app.wait_for_emails(&email, 1, MAIL).await;
    let ghost = email_address();

    let known = app.post("/api/v1/auth/forgot-password", &json!({ "email": email }), None).await;
    let unknown = app.post("/api/v1/auth/forgot-password", &json!({ "email": ghost }), None).await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(body(known).await, body(unknown).await);

    app.wait_for_emails(&email, 2, MAIL).await;
    // Another email sent after the ghost's request arrives; the ghost's never does.
    let marker = email_address();
    app.register(&marker).await;
    app.wait_for_emails(&marker, 1, MAIL).await;
    assert!(app.emails_to(&ghost).await.is_empty());
}

#[tokio::test]
async fn a_reset_token_works_once_revokes_sessions_and_sends_a_notice() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let session = app.register(&email).await;
    app.post("/api/v1/auth/forgot-password", &json!({ "email": email }), None).await;
    let mail = app.wait_for_emails(&email, 2, MAIL).await;
    let reset = mail
        .iter()
        .find(|m| m["subject"].as_str().unwrap().contains("Reset"))
        .expect("reset email");
    let link =
        format!("{}/reset-password?token=", app.settings.public_url.as_str().trim_end_matches('/'));
    assert!(reset["text"].as_str().unwrap().contains(&link));
    let token = token_in(reset);

    let new_password = "a brand new passphrase for tasklane";
    let weak = app
        .post(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "new_password": "password" }),
            None,
        )
        .await;
    assert_eq!(
        weak.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "the policy applies; the token stays usable"
    );
    let done = app
        .post(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "new_password": new_password }),
            None,
        )
        .await;
    assert_eq!(done.status(), StatusCode::NO_CONTENT);
    let again = app
        .post(
            "/api/v1/auth/reset-password",
            &json!({ "token": token, "new_password": new_password }),
            None,
        )
        .await;
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(again).await["type"], "urn:tasklane:problem:invalid_token");

    let refresh = session["refresh_token"].as_str().unwrap();
    assert_eq!(
        app.post("/api/v1/auth/refresh", &json!({ "refresh_token": refresh }), None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(login(&app, &email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, &email, new_password).await.status(), StatusCode::OK);
    let mail = app.wait_for_emails(&email, 3, MAIL).await;
    assert!(mail.iter().any(|m| m["subject"].as_str().unwrap().contains("password was changed")));
}

#[tokio::test]
async fn a_new_reset_voids_the_earlier_link_and_only_three_are_sent_per_hour() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    app.register(&email).await;
    for _ in 0..5 {
        let resp = app.post("/api/v1/auth/forgot-password", &json!({ "email": email }), None).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    let mail = app.wait_for_emails(&email, 4, MAIL).await; // verification + 3 resets
    // Everything the worker was given is handled once the outbox and queue are empty.
    tasklane_testkit::wait_until(MAIL, "the outbox drained", || async {
        (app.outbox_len().await == 0).then_some(())
    })
    .await;
    let resets: Vec<&Value> =
        mail.iter().filter(|m| m["subject"].as_str().unwrap().contains("Reset")).collect();
    assert_eq!(resets.len(), 3);
    let issued: i64 =
        sqlx::query_scalar("select count(*) from email_tokens where purpose = 'reset_password'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(issued, 3, "the extra requests created no token and no email job");
    assert_eq!(app.emails_to(&email).await.len(), 4);
    // Emails arrive in any order (the worker sends several at once): exactly one link, the
    // newest, still works.
    let mut worked = 0;
    for reset in &resets {
        let body =
            json!({ "token": token_in(reset), "new_password": "another long passphrase here" });
        match app.post("/api/v1/auth/reset-password", &body, None).await.status() {
            StatusCode::NO_CONTENT => worked += 1,
            other => assert_eq!(other, StatusCode::BAD_REQUEST),
        }
    }
    assert_eq!(worked, 1, "earlier links stop working when a new one is sent");
}

#[tokio::test]
async fn me_reads_and_updates_with_merge_semantics() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    let patch =
        |body: Value| app.client.patch(app.url("/api/v1/me")).bearer_auth(token).json(&body).send();

    let resp = patch(json!({ "display_name": "Ada", "timezone": "Europe/Paris", "digest_enabled": true, "digest_hour": 7 })).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let me = body(resp).await;
    assert_eq!(
        (me["display_name"].as_str(), me["timezone"].as_str(), me["digest_hour"].as_u64()),
        (Some("Ada"), Some("Europe/Paris"), Some(7))
    );
    let me = body(patch(json!({ "digest_hour": 9 })).await.unwrap()).await;
    assert_eq!(me["display_name"], "Ada", "absent leaves the field");
    let me = body(patch(json!({ "display_name": null })).await.unwrap()).await;
    assert!(me["display_name"].is_null(), "null clears it");

    let bad = patch(json!({ "timezone": "Mars/Olympus", "digest_hour": 24 })).await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<String> = body(bad).await["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(fields, ["timezone", "digest_hour"]);
    let unknown = patch(json!({ "role": "admin" })).await.unwrap();
    assert!(unknown.status().is_client_error());
    assert_eq!(unknown.headers()["content-type"], "application/problem+json");
    assert_eq!(body(app.get_as("/api/v1/me", token).await).await["role"], "user");
}

#[tokio::test]
async fn changing_the_password_keeps_this_session_and_ends_the_others() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let this = app.register(&email).await;
    let other = body(login(&app, &email, PASSWORD).await).await;
    let token = this["access_token"].as_str().unwrap();

    let wrong = app.post("/api/v1/me/password", &json!({ "current_password": "not my password at all", "new_password": "a fresh long passphrase" }), Some(token)).await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let ok = app
        .post(
            "/api/v1/me/password",
            &json!({ "current_password": PASSWORD, "new_password": "a fresh long passphrase" }),
            Some(token),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);

    let keep = app
        .post("/api/v1/auth/refresh", &json!({ "refresh_token": this["refresh_token"] }), None)
        .await;
    assert_eq!(keep.status(), StatusCode::OK, "this session survives");
    let gone = app
        .post("/api/v1/auth/refresh", &json!({ "refresh_token": other["refresh_token"] }), None)
        .await;
    assert_eq!(gone.status(), StatusCode::UNAUTHORIZED, "the other session is signed out");
    let mail = app.wait_for_emails(&email, 2, MAIL).await;
    assert!(mail.iter().any(|m| m["subject"].as_str().unwrap().contains("password was changed")));
}

#[tokio::test]
async fn configured_admins_are_admins_once_verified_and_users_get_403() {
    let admin_email = email_address();
    let listed = admin_email.clone();
    let app = TestApp::spawn_with(move |s| s.auth.admin_emails = vec![listed]).await;
    let _worker = app.spawn_worker().await;

    let unverified = app.register(&admin_email).await;
    assert_eq!(unverified["user"]["role"], "user", "not before the address is verified");
    let admin = app.register_verified_existing(&admin_email).await;
    assert_eq!(admin["user"]["role"], "admin");
    let admin_token = admin["access_token"].as_str().unwrap();

    let user = app.register(&email_address()).await;
    let user_token = user["access_token"].as_str().unwrap();
    let forbidden = app.get_as("/api/v1/admin/users", user_token).await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.headers()["content-type"], "application/problem+json");

    let page = body(app.get_as("/api/v1/admin/users?limit=1", admin_token).await).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let next = page["next_cursor"].as_str().unwrap();
    let page2 =
        body(app.get_as(&format!("/api/v1/admin/users?limit=1&cursor={next}"), admin_token).await)
            .await;
    assert_ne!(page["data"][0]["id"], page2["data"][0]["id"]);
    let paged = body(app.get_as("/api/v1/admin/users?page=1&limit=10", admin_token).await).await;
    assert_eq!(paged["total"], 2);
    let both = app.get_as(&format!("/api/v1/admin/users?page=1&cursor={next}"), admin_token).await;
    assert_eq!(both.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Disabling takes effect at once: the access token, refresh and login all stop working.
    let user_id = user["user"]["id"].as_str().unwrap();
    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{user_id}")))
        .bearer_auth(admin_token)
        .json(&json!({ "disabled": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(app.get_as("/api/v1/me", user_token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.post("/api/v1/auth/refresh", &json!({ "refresh_token": user["refresh_token"] }), None)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let email = user["user"]["email"].as_str().unwrap();
    assert_eq!(login(&app, email, PASSWORD).await.status(), StatusCode::UNAUTHORIZED);

    let self_demote = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{}", admin["user"]["id"].as_str().unwrap())))
        .bearer_auth(admin_token)
        .json(&json!({ "role": "user" }))
        .send()
        .await
        .unwrap();
    assert_eq!(self_demote.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn parallel_guesses_get_five_tries_not_one_each() {
    let app = TestApp::spawn().await;
    let email = email_address();
    app.register(&email).await;
    let guesses = (0..20).map(|i| {
        let app = &app;
        let email = email.clone();
        async move { login(app, &email, &format!("a wrong but long password {i}")).await.status() }
    });
    let statuses = futures::future::join_all(guesses).await;
    let checked = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((checked, refused), (5, 15), "{statuses:?}");
}

#[tokio::test]
async fn a_spoofed_first_forwarded_for_line_cannot_pick_the_counter() {
    let app =
        TestApp::spawn_with(|s| s.auth.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()])
            .await;
    let email = email_address();
    app.register(&email).await;
    for i in 0..5 {
        // The client's own line first, then the line our trusted proxy added.
        let resp = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .header("x-forwarded-for", "203.0.113.5")
            .json(&json!({ "email": email, "password": "a wrong but long password" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "198.51.100.99")
        .header("x-forwarded-for", "203.0.113.5")
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_new_verification_link_replaces_the_old_one() {
    let app = TestApp::spawn().await;
    let _worker = app.spawn_worker().await;
    let email = email_address();
    let session = app.register(&email).await;
    let token = session["access_token"].as_str().unwrap();
    let first = token_in(&app.wait_for_emails(&email, 1, MAIL).await[0]);
    assert_eq!(
        app.post("/api/v1/me/verification", &json!({}), Some(token)).await.status(),
        StatusCode::ACCEPTED
    );
    let mails = app.wait_for_emails(&email, 2, MAIL).await;
    let second = mails.iter().map(token_in).find(|t| *t != first).expect("a new link");
    let old = app.post("/api/v1/auth/verify-email", &json!({ "token": first }), None).await;
    assert_eq!(old.status(), StatusCode::BAD_REQUEST, "the earlier link stopped working");
    let new = app.post("/api/v1/auth/verify-email", &json!({ "token": second }), None).await;
    assert_eq!(new.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.post("/api/v1/me/verification", &json!({}), Some(token)).await.status(),
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn verification_emails_are_limited_to_three_an_hour() {
    let app = TestApp::spawn().await;
    let session = app.register(&email_address()).await;
    let token = session["access_token"].as_str().unwrap();
    // Registration sent the first; two more fit in the hour.
    for _ in 0..2 {
        assert_eq!(
            app.post("/api/v1/me/verification", &json!({}), Some(token)).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let refused = app.post("/api/v1/me/verification", &json!({}), Some(token)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
}
