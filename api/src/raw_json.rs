//! A JSON body that is already rendered, documented as the type it renders.
//!
//! The caches keep response bodies, not values: a task, a list page and the caller's
//! account are sent as stored, without parsing them back and rendering them again. The
//! body is rendered by [`RawJson::render`] through poem-openapi's own `ToJSON`, so a cached
//! answer is byte for byte what [`poem_openapi::payload::Json`] would send. It is held as
//! [`Bytes`], so a hit hands the stored buffer to the response without a copy.

use std::marker::PhantomData;

use bytes::Bytes;

use poem::{IntoResponse, Response};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ToJSON, Type};

/// What `Json<T>` declares in the spec.
const CONTENT_TYPE: &str = "application/json; charset=utf-8";

pub struct RawJson<T> {
    body: Bytes,
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
    pub fn from_rendered(body: impl Into<Bytes>) -> Self {
        Self { body: body.into(), schema: PhantomData }
    }

    pub fn as_bytes(&self) -> &Bytes {
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
