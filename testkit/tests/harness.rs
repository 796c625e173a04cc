//! The harness reaches every real service: S3 (signed requests to the test server) and the
//! mail capture; and the compose file sets what the binaries need.

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use aws_sdk_s3::primitives::ByteStream;
use tasklane_testkit::{TestApp, unique};

#[tokio::test]
async fn the_s3_server_stores_and_returns_an_object() {
    let app = TestApp::spawn().await;
    let s3 = app.s3();
    let key = format!("harness/{}.txt", unique("obj"));
    let bucket = &app.settings.s3.bucket;
    s3.put_object()
        .bucket(bucket)
        .key(&key)
        .body(ByteStream::from_static(b"tasklane"))
        .send()
        .await
        .unwrap();
    let got = s3.get_object().bucket(bucket).key(&key).send().await.unwrap();
    assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), b"tasklane");
    s3.delete_object().bucket(bucket).key(&key).send().await.unwrap();
}

#[tokio::test]
async fn the_s3_server_rejects_a_bad_signature() {
    let app = TestApp::spawn().await;
    let mut settings = app.settings.clone();
    settings.s3.secret_access_key = "not-the-secret".to_owned().into();
    let mut wrong = app;
    wrong.settings = settings;
    let result = wrong.s3().list_objects_v2().bucket(&wrong.settings.s3.bucket).send().await;
    assert!(result.is_err(), "a request signed with the wrong secret must be refused");
}

/// Every variable a binary needs outside dev must be set on the api and worker services.
#[test]
fn compose_sets_every_required_variable_on_api_and_worker() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml"))
            .expect("docker-compose.yml at the repository root");
    let compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("valid YAML");
    let required = [
        "DATABASE_URL",
        "REDIS_URL",
        "SMTP_URL",
        "S3_ENDPOINT",
        "S3_PUBLIC_ENDPOINT",
        "S3_BUCKET",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "JWT_SECRET",
        "PUBLIC_URL",
        "TASKLANE_ENV",
    ];
    for (service, addr_var) in [("api", "TASKLANE_API_ADDR"), ("worker", "TASKLANE_WORKER_ADDR")] {
        let env = &compose["services"][service]["environment"];
        let set: BTreeSet<String> = match env {
            serde_yaml::Value::Mapping(map) => {
                map.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect()
            }
            serde_yaml::Value::Sequence(list) => list
                .iter()
                .filter_map(|item| item.as_str()?.split('=').next().map(str::to_owned))
                .collect(),
            other => panic!("services.{service}.environment missing or odd: {other:?}"),
        };
        for var in required.iter().chain([&addr_var]) {
            assert!(set.contains(*var), "services.{service}.environment lacks {var}");
        }
    }
    assert!(
        compose["services"]["worker"]["deploy"]["replicas"].as_u64().unwrap_or(1) >= 2,
        "workers run as a fleet"
    );
}
