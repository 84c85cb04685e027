//! The HTTP client for streamable-HTTP MCP servers: rmcp's own reqwest
//! client behaviour, plus the W3C `traceparent` header on every POST whose
//! JSON-RPC request carries `_meta.traceparent` (a tool call inside a
//! traced task), so an HTTP server, and any proxy in front of it, can join
//! the trace without reading the body.
//!
//! Everything else is delegated to rmcp's implementation for
//! `reqwest::Client`. The client is built like rmcp's default one: no idle
//! pooling, and only same-origin 307/308 redirects (a cross-origin one
//! would replay the session id and the configured headers to another host).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
};
use sse_stream::Sse;

/// Redirect hops followed for one request.
const MAX_REDIRECTS: usize = 10;

#[derive(Clone)]
pub(crate) struct TracedHttp(reqwest::Client);

impl TracedHttp {
    pub fn new() -> Result<TracedHttp, reqwest::Error> {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .redirect(same_origin_only())
            .build()
            .map(TracedHttp)
    }
}

/// 307 and 308 keep the method and body; anything else, or another
/// origin, goes back to the caller as the redirect response.
fn same_origin_only() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(
            attempt.status(),
            reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
        );
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !keeps_body || !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// The `_meta.traceparent` of a request, as a header value.
fn traceparent(message: &ClientJsonRpcMessage) -> Option<HeaderValue> {
    // Only requests carry one; notifications and responses are not
    // serialised a second time for nothing.
    let rmcp::model::JsonRpcMessage::Request(request) = message else {
        return None;
    };
    let v = serde_json::to_value(request).ok()?;
    let tp = v.get("params")?.get("_meta")?.get("traceparent")?.as_str()?;
    HeaderValue::from_str(tp).ok()
}

fn with_traceparent(
    message: &ClientJsonRpcMessage,
    mut headers: HashMap<HeaderName, HeaderValue>,
) -> HashMap<HeaderName, HeaderValue> {
    if let Some(tp) = traceparent(message) {
        headers.insert(HeaderName::from_static("traceparent"), tp);
    }
    headers
}

type Stream = BoxStream<'static, Result<Sse, SseError>>;
type Failure = StreamableHttpError<reqwest::Error>;

impl StreamableHttpClient for TracedHttp {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let headers = with_traceparent(&message, custom_headers);
        self.0
            .post_message(uri, message, session_id, auth_header, headers)
            .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, Failure> {
        let headers = with_traceparent(&message, custom_headers);
        self.0
            .post_message_with_max_sse_event_size(uri, message, session_id, auth_header, headers, max_sse_event_size)
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), Failure> {
        self.0
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<Stream, Failure> {
        self.0
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<Stream, Failure> {
        self.0
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}
