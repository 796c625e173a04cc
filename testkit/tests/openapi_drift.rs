//! The committed `openapi.json` is what the code generates, so every API change shows in
//! review. (The served copy is compared in `api_http.rs`.)

// Test helpers fail loudly: an unwrap here is an assertion.
#![allow(clippy::unwrap_used)]

#[test]
fn committed_openapi_json_matches_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json"))
            .expect("openapi.json at the repository root");
    let generated = tasklane_api::openapi::spec_json();
    if std::env::var_os("TASKLANE_UPDATE_OPENAPI").is_some() && committed != generated {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json"), &generated)
            .expect("write openapi.json");
        return;
    }
    assert!(
        committed == generated,
        "openapi.json differs from the code's spec; regenerate it with \
         `target/debug/tasklane-api openapi > openapi.json` (or TASKLANE_UPDATE_OPENAPI=1 scripts/test) and commit"
    );
}
