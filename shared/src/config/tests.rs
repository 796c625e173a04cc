//! How settings are read: defaults, overrides, and prod's refusals.

use super::*;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[test]
fn dev_starts_with_no_configuration() {
    let settings = Settings::from_vars(HashMap::new()).expect("dev defaults");
    assert_eq!(settings.env, Environment::Dev);
    assert_eq!(settings.redis_prefix, "tasklane");
    assert_eq!(settings.s3.public_endpoint, settings.s3.endpoint);
}

#[test]
fn environment_overrides_defaults() {
    let settings = Settings::from_vars(vars(&[
        ("TASKLANE_API_ADDR", "127.0.0.1:9999"),
        ("TASKLANE_CORS_ORIGINS", "https://a.example, https://b.example/"),
        ("S3_ENDPOINT", "http://10.0.0.1:9000"),
    ]))
    .expect("valid");
    assert_eq!(settings.api_addr.port(), 9999);
    assert_eq!(settings.cors_origins, ["https://a.example", "https://b.example"]);
    assert_eq!(settings.s3.public_endpoint, "http://10.0.0.1:9000");
}

#[test]
fn prod_without_settings_lists_every_missing_one() {
    let err = Settings::from_vars(vars(&[("TASKLANE_ENV", "prod")])).expect_err("must fail");
    let text = err.to_string();
    for key in ["DATABASE_URL", "REDIS_URL", "SMTP_URL", "JWT_SECRET", "S3_BUCKET", "PUBLIC_URL"] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
}

#[test]
fn prod_refuses_a_short_jwt_secret_and_dev_credentials() {
    let err = Settings::from_vars(vars(&[
        ("TASKLANE_ENV", "prod"),
        ("TASKLANE_API_ADDR", "0.0.0.0:8080"),
        ("TASKLANE_WORKER_ADDR", "0.0.0.0:8081"),
        ("DATABASE_URL", "postgres://db/tasklane"),
        ("REDIS_URL", "redis://redis"),
        ("SMTP_URL", "smtp://mail:25"),
        ("S3_ENDPOINT", "https://s3.example"),
        ("S3_BUCKET", "b"),
        ("AWS_ACCESS_KEY_ID", "tasklane-dev"),
        ("AWS_SECRET_ACCESS_KEY", "tasklane-dev-secret"),
        ("JWT_SECRET", "short"),
        ("PUBLIC_URL", "https://tasklane.example"),
        ("TASKLANE_API_PUBLIC_URL", "https://api.tasklane.example"),
    ]))
    .expect_err("must fail");
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.problems[0].contains("JWT_SECRET"));
    assert!(err.problems[1].contains("dev defaults"));
}

#[test]
fn prod_needs_an_https_api_public_url_for_download_links() {
    let prod = |api_public_url: Option<&str>| {
        let mut pairs = vec![
            ("TASKLANE_ENV", "prod"),
            ("TASKLANE_API_ADDR", "0.0.0.0:8080"),
            ("TASKLANE_WORKER_ADDR", "0.0.0.0:8081"),
            ("DATABASE_URL", "postgres://db/tasklane"),
            ("REDIS_URL", "redis://redis"),
            ("SMTP_URL", "smtp://mail:25"),
            ("S3_ENDPOINT", "https://s3.example"),
            ("S3_BUCKET", "b"),
            ("AWS_ACCESS_KEY_ID", "prod-key"),
            ("AWS_SECRET_ACCESS_KEY", "prod-secret"),
            ("JWT_SECRET", "super-secret-value-0123456789abcdef-0123456789"),
            ("PUBLIC_URL", "https://tasklane.example"),
        ];
        pairs.extend(api_public_url.map(|url| ("TASKLANE_API_PUBLIC_URL", url)));
        Settings::from_vars(vars(&pairs))
    };
    let missing = prod(None).expect_err("unset in prod");
    assert!(missing.to_string().contains("TASKLANE_API_PUBLIC_URL must be set"), "{missing}");
    let plain = prod(Some("http://api.tasklane.example")).expect_err("http in prod");
    assert!(plain.to_string().contains("TASKLANE_API_PUBLIC_URL must be https"), "{plain}");
    let settings = prod(Some("https://api.tasklane.example")).expect("valid");
    assert_eq!(settings.api_public_url.unwrap().as_str(), "https://api.tasklane.example/");
    let relative = Settings::from_vars(vars(&[("TASKLANE_API_PUBLIC_URL", "/api")]));
    assert!(relative.expect_err("relative").to_string().contains("TASKLANE_API_PUBLIC_URL"));
}

#[test]
fn a_malformed_value_is_named() {
    let err = Settings::from_vars(vars(&[("TASKLANE_MAX_BODY_BYTES", "lots")])).expect_err("bad");
    assert!(err.to_string().contains("TASKLANE_MAX_BODY_BYTES=\"lots\" is invalid"));
}

#[test]
fn secrets_are_not_printed_by_debug() {
    let settings =
        Settings::from_vars(vars(&[("JWT_SECRET", "super-secret-value-0123456789abcdef")]))
            .expect("valid");
    assert!(!format!("{settings:?}").contains("super-secret-value"));
}

#[test]
fn a_retry_scale_of_zero_or_less_is_refused() {
    for bad in ["0", "-1", "NaN"] {
        let err = Settings::from_vars(vars(&[("TASKLANE_RETRY_SCALE", bad)])).expect_err(bad);
        assert!(err.to_string().contains("TASKLANE_RETRY_SCALE"), "{bad}: {err}");
    }
    let scaled = Settings::from_vars(vars(&[("TASKLANE_RETRY_SCALE", "0.001")])).expect("valid");
    assert!((scaled.retry_scale - 0.001).abs() < f64::EPSILON);
}
