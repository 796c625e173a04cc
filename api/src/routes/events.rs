//! `/api/v1/events` (SSE), `/api/v1/ws` (WebSocket) and `/api/v1/events/ticket`
//! (SPEC section 8). The streams themselves live in [`crate::hub`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use poem::Request;
use poem::http::StatusCode;
use poem::web::Data;
use poem::web::sse::Event;
use poem::web::websocket::{BoxWebSocketUpgraded, CloseCode, Message, WebSocket};
use poem_openapi::auth::ApiKey;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use poem_openapi::{ApiResponse, Object, OpenApi, SecurityScheme};
use sha2::{Digest, Sha256};
use tasklane_shared::events::EventId;

use crate::hub::{EventType, StreamEvent};
use crate::problem::{AuthedError, FieldError, Problem, ServerError};
use crate::security::{BearerAuth, CurrentUser, authenticate_user};
use crate::state::AppState;
use crate::tags::ApiTags;

/// How long a ticket works.
const TICKET_TTL: Duration = Duration::from_secs(30);

pub struct EventsApi;

/// A one-time ticket from `POST /api/v1/events/ticket`, as `?ticket=` (browsers'
/// `EventSource` and `WebSocket` cannot send headers).
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "ticket", key_in = "query", checker = "redeem")]
pub struct TicketAuth(CurrentUser);

/// A bearer token, or a one-time ticket.
#[derive(SecurityScheme)]
pub enum StreamAuth {
    Bearer(BearerAuth),
    Ticket(TicketAuth),
}

impl StreamAuth {
    pub(crate) fn user(&self) -> &CurrentUser {
        match self {
            Self::Bearer(auth) => &auth.0,
            Self::Ticket(auth) => &auth.0,
        }
    }
}

fn ticket_hash(ticket: &str) -> String {
    Sha256::digest(ticket.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Takes the ticket (it works once), then checks the account as a bearer token would be.
async fn redeem(req: &Request, key: ApiKey) -> poem::Result<CurrentUser> {
    let unauthorized = || {
        poem::Error::from_string(
            "the ticket is unknown, expired or already used",
            StatusCode::UNAUTHORIZED,
        )
    };
    let state = req
        .data::<AppState>()
        .ok_or_else(|| poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR))?;
    let user: Option<String> = redis::cmd("GETDEL")
        .arg(tasklane_shared::events::ticket_key(&state.keys, &ticket_hash(&key.key)))
        .query_async(&mut state.redis.clone())
        .await
        .map_err(|err| poem::Error::from(ServerError::from(err)))?;
    // The ticket names the session it was taken in: it works while that session does.
    let (user, session) = user
        .as_deref()
        .and_then(|raw| raw.split_once(' '))
        .and_then(|(user, session)| Some((user.parse().ok()?, session.parse().ok()?)))
        .ok_or_else(unauthorized)?;
    authenticate_user(state, user, session).await?.ok_or_else(unauthorized)
}

#[derive(Debug, Object)]
pub struct Ticket {
    /// Pass as `?ticket=` to `/api/v1/events` or `/api/v1/ws`; it works once.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(ApiResponse)]
pub enum TicketResponse {
    #[oai(status = 201)]
    Created(Json<Ticket>),
}

#[derive(ApiResponse)]
pub enum EventsResponse {
    /// The event stream: each event's JSON in `data:`, its id in `id:` and its type in
    /// `event:`; heartbeat comments when idle.
    #[oai(status = 200)]
    Stream(EventStream<futures::stream::BoxStream<'static, StreamEvent>>),
    /// `Last-Event-ID` is not an event id.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
}

#[derive(ApiResponse)]
pub enum WsError {
    /// `last_event_id` is not an event id.
    #[oai(status = 422, content_type = "application/problem+json")]
    Invalid(Json<Problem>),
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>, #[oai(header = "Retry-After")] u32),
}

impl From<AuthedError> for WsError {
    fn from(err: AuthedError) -> Self {
        match err {
            AuthedError::Unauthorized(problem) => Self::Unauthorized(problem),
            AuthedError::Internal(problem) => Self::Internal(problem),
            AuthedError::Unavailable(problem, retry) => Self::Unavailable(problem, retry),
        }
    }
}

fn parse_last(raw: Option<&str>, field: &str) -> Result<Option<EventId>, Problem> {
    match raw.map(str::trim).filter(|raw| !raw.is_empty()) {
        None => Ok(None),
        Some(raw) => EventId::parse(raw).map(Some).ok_or_else(|| {
            Problem::validation(vec![FieldError::new(
                field,
                "invalid",
                "is not an event id from this stream",
            )])
        }),
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Events")]
impl EventsApi {
    /// A one-time ticket for the event streams (30 seconds, single use).
    ///
    /// Browsers' `EventSource` and `WebSocket` cannot send an `Authorization` header: get a
    /// ticket with your token, then open `/api/v1/events?ticket=...`.
    #[oai(path = "/events/ticket", method = "post")]
    async fn ticket(
        &self,
        auth: BearerAuth,
        state: Data<&AppState>,
    ) -> Result<TicketResponse, AuthedError> {
        let ticket = crate::auth::tokens::new_opaque_token();
        let expires_at = Utc::now() + TICKET_TTL;
        let _: () = redis::cmd("SET")
            .arg(tasklane_shared::events::ticket_key(&state.keys, &ticket_hash(&ticket)))
            .arg(format!("{} {}", auth.0.id, auth.0.session))
            .arg("EX")
            .arg(TICKET_TTL.as_secs())
            .query_async(&mut state.redis.clone())
            .await?;
        Ok(TicketResponse::Created(Json(Ticket { ticket, expires_at })))
    }

    /// Your events as Server-Sent Events.
    ///
    /// `task.created`, `task.updated`, `task.deleted`, `task.restored`, `task.overdue`,
    /// `attachment.ready`, `attachment.rejected`, each `{id, type, at, data}` (see
    /// `StreamEvent`), published once the change is committed. Reconnect with
    /// `Last-Event-ID` (EventSource does it for you) to get what you missed; past what is
    /// kept (the last 1,000 events) you get a `resync` instead: reload, then carry on. A
    /// client that falls 256 events behind is sent `closing` with reason `slow_consumer` and
    /// disconnected; so is everyone when the server shuts down (reason `closing`).
    #[oai(path = "/events", method = "get")]
    async fn events(
        &self,
        auth: StreamAuth,
        state: Data<&AppState>,
        #[oai(name = "Last-Event-ID")] last_event_id: Header<Option<String>>,
    ) -> Result<EventsResponse, AuthedError> {
        let last = match parse_last(last_event_id.0.as_deref(), "Last-Event-ID") {
            Ok(last) => last,
            Err(problem) => return Ok(EventsResponse::Invalid(Json(problem))),
        };
        let stream = state.hub.connect(auth.user().id, last).await?;
        Ok(EventsResponse::Stream(
            EventStream::new(stream.boxed()).keep_alive(state.hub.heartbeat()).to_event(|event| {
                let sse =
                    Event::message(event.to_json_string()).event_type(event.event_type.as_str());
                if event.id.is_empty() { sse } else { sse.id(event.id) }
            }),
        ))
    }

    /// Your events over a WebSocket.
    ///
    /// The same events as `/api/v1/events`, one JSON text message each. Resume with
    /// `?last_event_id=` (the `id` of the last event you got). The server pings every 15
    /// seconds; it closes with code 1001 when shutting down and 4008 (`slow_consumer`) when
    /// you fall 256 events behind.
    #[oai(path = "/ws", method = "get")]
    async fn ws(
        &self,
        auth: StreamAuth,
        state: Data<&AppState>,
        last_event_id: Query<Option<String>>,
        websocket: WebSocket,
    ) -> Result<BoxWebSocketUpgraded, WsError> {
        let last = parse_last(last_event_id.0.as_deref(), "last_event_id")
            .map_err(|problem| WsError::Invalid(Json(problem)))?;
        let (hub, user) = (state.hub.clone(), auth.user().id);
        let heartbeat = hub.heartbeat();
        Ok(websocket
            .on_upgrade(move |socket| async move {
                let (mut sink, mut incoming) = socket.split();
                let mut events = match hub.connect(user, last).await {
                    Ok(events) => events.boxed(),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot open an event stream");
                        let _ = sink.send(Message::close_with(CloseCode::Again, "unavailable")).await;
                        return;
                    }
                };
                let mut ping = tokio::time::interval(heartbeat);
                ping.reset();
                loop {
                    tokio::select! {
                        event = events.next() => match event {
                            Some(event) if event.event_type == EventType::Closing => {
                                let slow = event.data["reason"] == "slow_consumer";
                                let _ = sink.send(Message::text(event.to_json_string())).await;
                                let code = if slow { CloseCode::from(4008) } else { CloseCode::Away };
                                let reason = if slow { "slow_consumer" } else { "closing" };
                                let _ = sink.send(Message::close_with(code, reason)).await;
                                break;
                            }
                            Some(event) => {
                                if sink.send(Message::text(event.to_json_string())).await.is_err() {
                                    break;
                                }
                            }
                            None => break,
                        },
                        message = incoming.next() => match message {
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                            Some(Ok(_)) => {}
                        },
                        _ = ping.tick() => {
                            if sink.send(Message::Ping(Vec::new())).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            })
            .boxed())
    }
}
