//! A JSON body that is already rendered, documented as the type it renders.
//!
//! The task cache keeps the response body of a task, not the task: a hit is sent as stored,
//! without parsing it back and rendering it again. The body is rendered by
//! [`RawJson::render`] through poem-openapi's own `ToJSON`, so a cached answer is byte for
//! byte what [`poem_openapi::payload::Json`] would send.

use std::marker::PhantomData;

use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};

/// What `Json<T>` declares in the spec.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

pub struct RawJson<T> {
    body: String,
    schema: PhantomData<fn() -> T>,
}

impl<T: ToJSON> RawJson<T> {
    /// Renders `value` as `Json<T>` would.
    pub fn render(value: &T) -> Self {
        Self::from_rendered(value.to_json_string())
    }
}

impl<T> RawJson<T> {
    /// A body rendered earlier by [`RawJson::render`].
    pub fn from_rendered(body: String) -> Self {
        Self { body, schema: PhantomData }
    }

    pub fn as_str(&self) -> &str {
        &self.body
    }
}

impl<T: Type> Payload for RawJson<T> {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: Send> IntoResponse for RawJson<T> {
    fn into_response(self) -> Response {
        Response::builder().content_type(CONTENT_TYPE).body(self.body)
    }
}
