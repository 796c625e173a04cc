//! Hostile input refused in one place, before any handler runs (SPEC sections 2 and 14).
//!
//! Two things poem-openapi lets through are checked here against the API's own OpenAPI
//! document, so every operation is covered without a line of its own:
//!
//! - A NUL character (U+0000) in any string of a JSON body (keys included) or in a path or
//!   query parameter the operation declares: Postgres refuses NUL in `text` and `jsonb`, so
//!   it would otherwise surface as a 500 from whichever query met it first. 422 naming the
//!   field (`title`, `tasks[0].title`, `q`).
//! - A JSON boolean or number where the schema says `string`: poem-openapi's `String`
//!   parser turns `false` into `"false"`, accepting a request its own schema forbids. 400
//!   naming the field, like the other wrong types poem-openapi refuses itself.
//!
//! Everything else about a body (syntax, required fields, other types, enums, unknown
//! fields) stays poem-openapi's, which parses the body after this check.
//!
//! It runs on every request, so it costs little: operations are found by method and
//! segment count without allocating, and a body is parsed here only when a first scan of
//! its bytes finds something this check is about (an escaped NUL, or a boolean or number
//! outside any string); most bodies are then parsed once, by poem-openapi.

use std::collections::HashMap;

use poem::http::StatusCode;
use serde_json::Value;

use crate::problem::{FieldError, Problem};

/// The operations of the document, as far as their input goes.
#[derive(Debug)]
pub struct InputGuard {
    /// By method, then by the number of `/`-separated segments of the path, literal
    /// segments first within each.
    operations: HashMap<String, Vec<Vec<Operation>>>,
    /// `components.schemas` of the document, for `$ref`s.
    schemas: serde_json::Map<String, Value>,
}

/// One operation: where it is, the parameters it declares and the schema of its JSON body.
#[derive(Debug)]
pub struct Operation {
    method: String,
    /// The document's path, e.g. `/api/v1/tasks/{id}`.
    path: String,
    segments: Vec<Segment>,
    query: Vec<String>,
    body: Option<Value>,
}

#[derive(Debug)]
enum Segment {
    Literal(String),
    Param(String),
}

impl InputGuard {
    /// The guard of the operations of `document` (an OpenAPI 3 document as JSON).
    pub fn from_document(document: &Value) -> Self {
        let mut operations = Vec::new();
        let paths = document["paths"].as_object().into_iter().flatten();
        for (path, item) in paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                let params = op["parameters"].as_array().into_iter().flatten();
                let query = params
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect();
                let body = op["requestBody"]["content"]
                    .as_object()
                    .and_then(|content| content.values().next())
                    .map(|media| media["schema"].clone());
                operations.push(Operation {
                    method: method.to_ascii_uppercase(),
                    path: path.clone(),
                    segments: segments(path),
                    query,
                    body,
                });
            }
        }
        // Literal segments win over parameters (`/tasks/bulk` before `/tasks/{id}`).
        operations.sort_by_key(|op| {
            std::cmp::Reverse(
                op.segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count(),
            )
        });
        let mut by_method: HashMap<String, Vec<Vec<Operation>>> = HashMap::new();
        for op in operations {
            let by_length = by_method.entry(op.method.clone()).or_default();
            if by_length.len() <= op.segments.len() {
                by_length.resize_with(op.segments.len() + 1, Vec::new);
            }
            by_length[op.segments.len()].push(op);
        }
        let schemas = document["components"]["schemas"].as_object().cloned().unwrap_or_default();
        Self { operations: by_method, schemas }
    }

    /// The operation `method` on `path` (a request's raw path) reaches, if any. `HEAD` runs
    /// the `GET` handler (poem answers it without the body), so it is checked as one.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Operation> {
        let method = if method == "HEAD" { "GET" } else { method };
        let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
        let candidates = self.operations.get(method)?.get(path.split('/').count())?;
        candidates.iter().find(|op| {
            op.segments.iter().zip(path.split('/')).all(|(segment, part)| match segment {
                Segment::Literal(literal) => literal == part,
                Segment::Param(_) => !part.is_empty(),
            })
        })
    }

    /// The problem to answer instead of running `op`, if its input is refused. `body` is the
    /// raw request body when it is JSON; a body that does not parse is left to poem-openapi.
    pub fn check(
        &self,
        op: &Operation,
        path: &str,
        query: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(), Problem> {
        let mut nul = Vec::new();
        for (segment, part) in op.segments.iter().zip(path.split('/')) {
            // Raw NUL cannot be in a URI; encoded, it is `%00`.
            if let Segment::Param(name) = segment
                && part.contains("%00")
            {
                nul.push(nul_error(name));
            }
        }
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            if value.contains('\0') && op.query.iter().any(|declared| *declared == name) {
                nul.push(nul_error(&name));
            }
        }
        let mut wrong_type = Vec::new();
        if let (Some(schema), Some(body)) = (&op.body, body)
            && worth_parsing(body)
            && let Ok(value) = serde_json::from_slice::<Value>(body)
        {
            nul_strings(&value, "", &mut nul);
            self.check_types(&value, schema, "", &mut wrong_type, 0);
        }
        if !wrong_type.is_empty() {
            let mut problem = Problem::validation(wrong_type);
            problem.status = StatusCode::BAD_REQUEST.as_u16();
            problem.title = "Bad Request".to_owned();
            problem.problem_type = "urn:tasklane:problem:bad_request".to_owned();
            return Err(problem);
        }
        if !nul.is_empty() {
            nul.dedup_by(|a, b| a.field == b.field);
            return Err(Problem::validation(nul));
        }
        Ok(())
    }

    /// Strings where the schema says `string`, in objects and arrays all the way down.
    fn check_types(
        &self,
        value: &Value,
        schema: &Value,
        path: &str,
        errors: &mut Vec<FieldError>,
        depth: usize,
    ) {
        // `$ref` chains and `allOf` nest a little; a document never nests this deep.
        if depth > 64 || value.is_null() {
            return;
        }
        if let Some(target) = schema["$ref"].as_str() {
            let name = target.rsplit('/').next().unwrap_or_default();
            if let Some(schema) = self.schemas.get(name) {
                self.check_types(value, schema, path, errors, depth + 1);
            }
            return;
        }
        for part in schema["allOf"].as_array().into_iter().flatten() {
            self.check_types(value, part, path, errors, depth + 1);
        }
        match (schema["type"].as_str(), value) {
            (Some("string"), Value::String(_)) => {}
            (Some("string"), Value::Bool(_) | Value::Number(_)) => {
                errors.push(FieldError::new(
                    display_path(path),
                    "wrong_type",
                    "must be a string (true, false and numbers are not)",
                ));
            }
            (_, Value::Object(fields)) => {
                let properties = schema["properties"].as_object();
                for (name, field) in fields {
                    let field_schema = properties.and_then(|p| p.get(name)).or_else(|| {
                        Some(&schema["additionalProperties"]).filter(|s| s.is_object())
                    });
                    if let Some(field_schema) = field_schema {
                        let path =
                            format!("{path}{}{name}", if path.is_empty() { "" } else { "." });
                        self.check_types(field, field_schema, &path, errors, depth + 1);
                    }
                }
            }
            (_, Value::Array(items)) if schema["items"].is_object() => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    self.check_types(item, &schema["items"], &path, errors, depth + 1);
                }
            }
            _ => {}
        }
    }
}

impl Operation {
    /// The document's path of the operation (`/api/v1/tasks/{id}`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the operation takes a JSON body (which [`InputGuard::check`] then needs).
    pub fn takes_body(&self) -> bool {
        self.body.is_some()
    }
}

/// Whether a JSON body may hold what [`InputGuard::check`] refuses: an escaped NUL
/// (`\u0000`; a raw one is not JSON at all) in a string, or a boolean or number (a `t`,
/// `f`, digit or `-` outside any string). One pass over the bytes, without allocating; a
/// body this says no for is left to poem-openapi whole.
fn worth_parsing(body: &[u8]) -> bool {
    let (mut in_string, mut escaped) = (false, false);
    for (i, &byte) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
                if byte == b'u' && body[i + 1..].starts_with(b"0000") {
                    return true;
                }
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if byte == b'"' {
            in_string = true;
        } else if matches!(byte, b't' | b'f' | b'-' | b'0'..=b'9') {
            return true;
        }
    }
    false
}

fn segments(path: &str) -> Vec<Segment> {
    path.split('/')
        .map(|part| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) => Segment::Param(name.to_owned()),
            None => Segment::Literal(part.to_owned()),
        })
        .collect()
}

fn nul_error(field: &str) -> FieldError {
    FieldError::new(
        display_path(field),
        "nul_character",
        "must not contain a NUL character (U+0000)",
    )
}

/// A field's path as problems name it; a NUL in a key itself is shown escaped.
fn display_path(path: &str) -> String {
    let path = if path.is_empty() { "body" } else { path };
    path.replace('\0', "\\u0000")
}

/// Every string (and key) holding a NUL, by path: `title`, `tasks[0].title`, `tags[2]`.
fn nul_strings(value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    match value {
        Value::String(text) if text.contains('\0') => errors.push(nul_error(path)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nul_strings(item, &format!("{path}[{i}]"), errors);
            }
        }
        Value::Object(fields) => {
            for (name, field) in fields {
                let path = format!("{path}{}{name}", if path.is_empty() { "" } else { "." });
                if name.contains('\0') {
                    errors.push(nul_error(&path));
                } else {
                    nul_strings(field, &path, errors);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn guard() -> InputGuard {
        InputGuard::from_document(&json!({
            "paths": {
                "/tasks/{id}": { "patch": {
                    "parameters": [{ "name": "id", "in": "path" }],
                    "requestBody": { "content": { "application/json": { "schema": {
                        "$ref": "#/components/schemas/Task" } } } } } },
                "/tasks/bulk": { "post": {
                    "requestBody": { "content": { "application/json": { "schema": {
                        "type": "object",
                        "properties": { "tasks": { "type": "array", "items": {
                            "$ref": "#/components/schemas/Task" } } } } } } } } },
                "/tasks": { "get": { "parameters": [{ "name": "q", "in": "query" }] } }
            },
            "components": { "schemas": { "Task": {
                "type": "object",
                "properties": {
                    "title": { "type": "string" },
                    "done": { "type": "boolean" },
                    "tags": { "type": "array", "items": { "type": "string" } }
                }
            } } }
        }))
    }

    fn fields(problem: &Problem) -> Vec<(u16, &str, &str)> {
        let errors = problem.errors.iter().flatten();
        errors.map(|e| (problem.status, e.field.as_str(), e.code.as_str())).collect()
    }

    #[test]
    fn literal_segments_win_and_trailing_slashes_do_not_matter() {
        let guard = guard();
        assert_eq!(guard.operation("POST", "/tasks/bulk").unwrap().path(), "/tasks/bulk");
        assert_eq!(guard.operation("PATCH", "/tasks/bulk/").unwrap().path(), "/tasks/{id}");
        assert!(guard.operation("PATCH", "/tasks").is_none());
        assert!(guard.operation("GET", "/tasks/").is_some());
        assert_eq!(guard.operation("HEAD", "/tasks").unwrap().path(), "/tasks");
    }

    #[test]
    fn nul_is_refused_naming_the_field_wherever_it_is() {
        let guard = guard();
        let bulk = guard.operation("POST", "/tasks/bulk").unwrap();
        let body = br#"{"tasks": [{"title": "ok"}, {"tags": ["a", "b\u0000"]}]}"#;
        let problem = guard.check(bulk, "/tasks/bulk", None, Some(body)).unwrap_err();
        assert_eq!(fields(&problem), [(422, "tasks[1].tags[1]", "nul_character")]);

        let list = guard.operation("GET", "/tasks").unwrap();
        let problem = guard.check(list, "/tasks", Some("q=a%00b&other=%00"), None).unwrap_err();
        assert_eq!(fields(&problem), [(422, "q", "nul_character")]);
        assert!(guard.check(list, "/tasks", Some("other=%00&q=fine"), None).is_ok());

        let patch = guard.operation("PATCH", "/tasks/a%00").unwrap();
        let problem = guard.check(patch, "/tasks/a%00", None, Some(b"{}")).unwrap_err();
        assert_eq!(fields(&problem), [(422, "id", "nul_character")]);
        // An escaped backslash followed by `u0000` is no NUL.
        assert!(guard.check(patch, "/tasks/1", None, Some(br#"{"title": "\\u0000"}"#)).is_ok());
    }

    #[test]
    fn only_bodies_with_something_to_refuse_are_parsed() {
        for plain in [
            &br#"{"title": "a \"true\" 12 - f", "priority": "high", "tags": ["x"]}"#[..],
            br#"{"title": "\\u0000", "description": null}"#,
        ] {
            assert!(!worth_parsing(plain), "{}", String::from_utf8_lossy(plain));
        }
        for suspect in [
            &br#"{"done": true}"#[..],
            br#"{"title": false}"#,
            br#"{"tags": ["a", -1]}"#,
            br#"{"title": "a\u0000"}"#,
        ] {
            assert!(worth_parsing(suspect), "{}", String::from_utf8_lossy(suspect));
        }
    }

    #[test]
    fn booleans_and_numbers_are_no_strings() {
        let guard = guard();
        let patch = guard.operation("PATCH", "/tasks/1").unwrap();
        let body = br#"{"title": false, "done": true, "tags": ["a", 12]}"#;
        let problem = guard.check(patch, "/tasks/1", None, Some(body)).unwrap_err();
        let want = [(400, "tags[1]", "wrong_type"), (400, "title", "wrong_type")];
        let mut got = fields(&problem);
        got.sort_unstable();
        assert_eq!(got, want);
        // What poem-openapi refuses itself, or what does not parse, is left to it.
        assert!(guard.check(patch, "/tasks/1", None, Some(br#"{"done": "yes"}"#)).is_ok());
        assert!(guard.check(patch, "/tasks/1", None, Some(b"{\"title\": ")).is_ok());
        assert!(guard.check(patch, "/tasks/1", None, Some(br#"{"title": null}"#)).is_ok());
    }
}
