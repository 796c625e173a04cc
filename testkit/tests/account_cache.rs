//! The account cache behind authentication (`api/src/auth/accounts.rs`): a change made
//! through one instance (an account's role or state, a session signed out) takes effect on
//! every instance, and nothing cached is trusted while
//! an instance cannot hear about changes.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tasklane_testkit::{PASSWORD, TestApp, TestRedis, email_address, wait_until};

/// Announcements cross instances through Redis pub/sub: well under this.
const HEARD: Duration = Duration::from_secs(3);

async fn status(app: &TestApp, base: &str, path: &str, token: &str) -> StatusCode {
    app.client.get(format!("{base}{path}")).bearer_auth(token).send().await.unwrap().status()
}

/// Registers an account and makes it an admin in the database before it is ever used.
async fn admin(app: &TestApp) -> String {
    let session = app.register(&email_address()).await;
    sqlx::query("update users set role = 'admin' where id = $1::uuid")
        .bind(session["user"]["id"].as_str().unwrap())
        .execute(&app.db)
        .await
        .unwrap();
    session["access_token"].as_str().unwrap().to_owned()
}

async fn set(app: &TestApp, admin: &str, user: &str, change: Value) {
    let resp = app
        .client
        .patch(app.url(&format!("/api/v1/admin/users/{user}")))
        .bearer_auth(admin)
        .json(&change)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn disabling_or_promoting_through_one_instance_takes_effect_on_another() {
    let app = TestApp::spawn().await;
    let other = app.spawn_instance().await;
    let admin = admin(&app).await;
    let session = app.register(&email_address()).await;
    let (token, id) =
        (session["access_token"].as_str().unwrap(), session["user"]["id"].as_str().unwrap());

    // Both instances have the account cached as an active user.
    for base in [&app.address, &other] {
        for _ in 0..2 {
            assert_eq!(status(&app, base, "/api/v1/me", token).await, StatusCode::OK);
            assert_eq!(
                status(&app, base, "/api/v1/admin/users", token).await,
                StatusCode::FORBIDDEN
            );
        }
    }

    set(&app, &admin, id, json!({ "role": "admin" })).await;
    assert_eq!(
        status(&app, &app.address, "/api/v1/admin/users", token).await,
        StatusCode::OK,
        "at once where it was made"
    );
    wait_until(HEARD, "the other instance to see the promotion", || async {
        (status(&app, &other, "/api/v1/admin/users", token).await == StatusCode::OK).then_some(())
    })
    .await;

    set(&app, &admin, id, json!({ "disabled": true })).await;
    assert_eq!(
        status(&app, &app.address, "/api/v1/me", token).await,
        StatusCode::UNAUTHORIZED,
        "at once where it was made"
    );
    wait_until(HEARD, "the other instance to refuse the disabled account", || async {
        (status(&app, &other, "/api/v1/me", token).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;

    set(&app, &admin, id, json!({ "disabled": false })).await;
    // Disabling ended the account's sessions (README, "Sign-out ends the session at once"):
    // re-enabling it does not bring them back, on either instance; a new sign-in works on
    // both.
    let email = session["user"]["email"].as_str().unwrap();
    let resp = app
        .post("/api/v1/auth/login", &json!({ "email": email, "password": PASSWORD }), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let again: Value = resp.json().await.unwrap();
    let new_token = again["access_token"].as_str().unwrap();
    wait_until(HEARD, "the other instance to accept the account again", || async {
        (status(&app, &other, "/api/v1/me", new_token).await == StatusCode::OK).then_some(())
    })
    .await;
    for base in [&app.address, &other] {
        assert_eq!(status(&app, base, "/api/v1/me", new_token).await, StatusCode::OK);
        assert_eq!(
            status(&app, base, "/api/v1/me", token).await,
            StatusCode::UNAUTHORIZED,
            "a session ended by disabling stays ended"
        );
    }
}

#[tokio::test]
async fn without_its_subscription_an_instance_trusts_nothing_cached() {
    let mut redis = TestRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(move |s| s.redis_url = url.into()).await;
    let session = app.register(&email_address()).await;
    let (token, id) =
        (session["access_token"].as_str().unwrap(), session["user"]["id"].as_str().unwrap());
    assert_eq!(status(&app, &app.address, "/api/v1/me", token).await, StatusCode::OK);

    // Redis goes away: an announcement made now would be lost. A change straight in the
    // database stands for one, and the instance must see it without being told.
    redis.stop().await;
    sqlx::query("update users set disabled = true where id = $1::uuid")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    wait_until(
        HEARD,
        "the disabled account refused while announcements cannot be heard",
        || async {
            (status(&app, &app.address, "/api/v1/me", token).await == StatusCode::UNAUTHORIZED)
                .then_some(())
        },
    )
    .await;

    // Back: the subscription resumes and reads start afresh.
    redis.start_again().await;
    sqlx::query("update users set disabled = false where id = $1::uuid")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(10),
        "the account accepted again after Redis returned",
        || async {
            (status(&app, &app.address, "/api/v1/me", token).await == StatusCode::OK).then_some(())
        },
    )
    .await;
}

/// Signing out through one instance ends that session's access token on every instance at
/// once (README, "Sign-out ends the session at once"): the instance that ended it before it
/// answers, the others when they hear the announcement. Other sessions live on until a
/// password change signs them out, which reaches every instance the same way.
#[tokio::test]
async fn a_logout_through_one_instance_ends_the_access_token_on_another() {
    let app = TestApp::spawn().await;
    let other = app.spawn_instance().await;
    let email = email_address();
    let this = app.register(&email).await;
    let resp = app
        .post("/api/v1/auth/login", &json!({ "email": email, "password": PASSWORD }), None)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let second: Value = resp.json().await.unwrap();
    let (token, second_token) =
        (this["access_token"].as_str().unwrap(), second["access_token"].as_str().unwrap());

    // Both instances have both sessions cached as live.
    for base in [&app.address, &other] {
        for access in [token, second_token] {
            for _ in 0..2 {
                assert_eq!(status(&app, base, "/api/v1/me", access).await, StatusCode::OK);
            }
        }
    }

    let resp = app
        .post("/api/v1/auth/logout", &json!({ "refresh_token": this["refresh_token"] }), None)
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status(&app, &app.address, "/api/v1/me", token).await,
        StatusCode::UNAUTHORIZED,
        "at once where it was signed out"
    );
    wait_until(HEARD, "the other instance to refuse the signed-out session", || async {
        (status(&app, &other, "/api/v1/me", token).await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    for base in [&app.address, &other] {
        assert_eq!(
            status(&app, base, "/api/v1/me", second_token).await,
            StatusCode::OK,
            "the other session is not signed out"
        );
    }

    // A password change through the other instance signs out every session but its own.
    let third = app
        .post("/api/v1/auth/login", &json!({ "email": email, "password": PASSWORD }), None)
        .await;
    let third: Value = third.json().await.unwrap();
    let third_token = third["access_token"].as_str().unwrap();
    assert_eq!(status(&app, &app.address, "/api/v1/me", third_token).await, StatusCode::OK);
    let resp = app
        .client
        .post(format!("{other}/api/v1/me/password"))
        .bearer_auth(third_token)
        .json(&json!({
            "current_password": PASSWORD,
            "new_password": "another long passphrase for this account",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        status(&app, &other, "/api/v1/me", second_token).await,
        StatusCode::UNAUTHORIZED,
        "at once where the password changed"
    );
    wait_until(HEARD, "the first instance to refuse the signed-out session", || async {
        (status(&app, &app.address, "/api/v1/me", second_token).await == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await;
    for base in [&app.address, &other] {
        assert_eq!(
            status(&app, base, "/api/v1/me", third_token).await,
            StatusCode::OK,
            "the session that changed the password stays"
        );
    }
}
