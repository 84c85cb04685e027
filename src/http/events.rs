//! `GET /api/v1/events`: the [`Feed`](crate::feed::Feed) as Server-Sent
//! Events. Each event carries its feed id, so a client that reconnects
//! with `Last-Event-ID` (browsers' `EventSource` do it by themselves) gets
//! what it missed from the feed's ring; when that is no longer possible (an
//! id from before a restart of agentd, or older than the ring) it gets a
//! `reset` event first and re-reads the state it shows. A watcher that
//! reads too slowly catches up from the ring the same way, or is reset:
//! it never holds the publisher up.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast;

use super::App;
use crate::feed::{Feed, Item, Resume};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    agent: Option<String>,
    task: Option<i64>,
}

impl Filter {
    fn wants(&self, item: &Item) -> bool {
        self.agent.as_ref().is_none_or(|a| item.agent.as_ref() == Some(a))
            && self.task.is_none_or(|t| item.task == Some(t))
    }
}

struct Watch {
    feed: Arc<Feed>,
    rx: broadcast::Receiver<Arc<Item>>,
    pending: VecDeque<Arc<Item>>,
    last: u64,
    reset: bool,
    filter: Filter,
}

pub(super) async fn stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(filter) = match q {
        Ok(q) => q,
        Err(e) => return super::api::error(axum::http::StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    };
    let feed = app.links.feed.clone();
    let last_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (resume, rx, head) = feed.subscribe(last_id);
    let (pending, reset) = match resume {
        Resume::From(items) => (VecDeque::from(items), false),
        Resume::Gap => (VecDeque::new(), true),
    };
    let watch = Watch {
        feed,
        rx,
        pending,
        // The replay holds everything up to `head`; the receiver what follows.
        last: head,
        reset,
        filter,
    };
    let events = futures_util::stream::unfold(watch, |mut w| async move {
        let ev = next(&mut w).await?;
        Some((Ok::<Event, Infallible>(ev), w))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The next event for this watcher; `None` ends the stream (agentd stops).
async fn next(w: &mut Watch) -> Option<Event> {
    loop {
        if w.reset {
            w.reset = false;
            return Some(Event::default().event("reset").data("{}"));
        }
        if let Some(item) = w.pending.pop_front() {
            w.last = w.last.max(item.seq);
            if w.filter.wants(&item) {
                return Some(event(&w.feed, &item));
            }
            continue;
        }
        match w.rx.recv().await {
            // Already sent from the replay.
            Ok(item) if item.seq <= w.last => {}
            Ok(item) => w.pending.push_back(item),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let (resume, rx) = w.feed.since(w.last);
                w.rx = rx;
                match resume {
                    Resume::From(items) => w.pending = VecDeque::from(items),
                    Resume::Gap => w.reset = true,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn event(feed: &Feed, item: &Item) -> Event {
    Event::default().id(feed.id(item)).event(item.kind).data(&item.data)
}
