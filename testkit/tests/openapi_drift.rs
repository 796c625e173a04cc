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

/// One way everywhere: an optional field is declared `nullable` (it is sent as `null`), and
/// every operation documents the problems it can answer before its handler runs.
#[test]
fn optional_fields_are_nullable_and_early_refusals_are_documented() {
    let document = tasklane_api::openapi::document();
    let mut missing = Vec::new();
    for (name, schema) in document["components"]["schemas"].as_object().unwrap() {
        let required = schema["required"].as_array().cloned().unwrap_or_default();
        for (field, property) in schema["properties"].as_object().into_iter().flatten() {
            let optional = !required.iter().any(|r| r == field.as_str());
            if optional && property["nullable"] != true {
                missing.push(format!("{name}.{field} is optional but not nullable"));
            }
            if property.get("$ref").is_some() && property.get("nullable").is_some() {
                missing.push(format!("{name}.{field}: nullable beside a $ref is ignored"));
            }
        }
    }
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let body = op.get("requestBody").is_some();
            let params =
                op["parameters"].as_array().into_iter().flatten().any(|p| p["in"] != "header");
            let mut wanted = Vec::new();
            if body || params {
                wanted.extend(["400", "422"]);
            }
            if body {
                wanted.push("415");
            }
            for status in wanted {
                let schema =
                    &op["responses"][status]["content"]["application/problem+json"]["schema"];
                if schema["$ref"] != "#/components/schemas/Problem" {
                    missing.push(format!("{method} {path}: no problem+json {status}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
