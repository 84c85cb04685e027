//! What happens in agentd, as a stream of events for watchers (the HTTP
//! API's `GET /api/v1/events` and the dashboard): tasks changing state,
//! journal steps as they are written, the model's streamed text, agents
//! changing state.
//!
//! The supervisor publishes (it alone knows what happened, after the ledger
//! took it); watchers subscribe. Publishing never waits for a watcher: a
//! bounded ring of the latest [`RING`] events is kept, and a watcher that
//! falls behind, or reconnects with `Last-Event-ID`, catches up from it.
//! Ids are `BOOT-SEQ`: `SEQ` counts up within one agentd process and
//! `BOOT` names the process (its start time in ms), so an id from before a
//! restart, or one that has left the ring, is recognised and answered with
//! [`Resume::Gap`] (the watcher re-reads the state) instead of silently
//! skipping events. This module never touches the ledger or the network.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

/// How many recent events are kept for watchers that reconnect, and how
/// many bytes of them at most (a journal step may carry 16 KiB of text per
/// field: the count alone would not bound the memory).
pub const RING: usize = 16_384;
pub const RING_BYTES: usize = 32 * 1024 * 1024;

/// One published event.
#[derive(Debug)]
pub struct Item {
    pub seq: u64,
    /// `task`, `step`, `output`, `agent`: the SSE event name.
    pub kind: &'static str,
    /// The agent and task it is about, for watchers that filter.
    pub agent: Option<String>,
    pub task: Option<i64>,
    /// The event as a JSON object.
    pub data: String,
}

/// Where a subscriber starts.
pub enum Resume {
    /// Everything after the given id, still in the ring (possibly nothing).
    From(Vec<Arc<Item>>),
    /// The id is from another agentd process, or too old: events were
    /// missed, and the watcher must re-read the state.
    Gap,
}

struct Inner {
    next: u64,
    ring: VecDeque<Arc<Item>>,
    /// The size of the events in the ring.
    bytes: usize,
}

/// The event hub, shared by the supervisor (publisher) and watchers.
pub struct Feed {
    boot: u64,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<Item>>,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        let (tx, _) = broadcast::channel(1024);
        Arc::new(Feed {
            boot: crate::ledger::now_ms().max(0) as u64,
            inner: Mutex::new(Inner {
                next: 1,
                ring: VecDeque::with_capacity(RING),
                bytes: 0,
            }),
            tx,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every
        // change is a single push or pop): carry on with it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes an event (a JSON object; its `agent` and `task` fields
    /// say what it is about); never waits.
    pub fn publish(&self, kind: &'static str, data: serde_json::Value) {
        let mut inner = self.lock();
        let item = Arc::new(Item {
            seq: inner.next,
            kind,
            agent: data["agent"].as_str().map(str::to_owned),
            task: data["task"].as_i64(),
            data: data.to_string(),
        });
        inner.next += 1;
        inner.bytes += item.data.len();
        inner.ring.push_back(item.clone());
        while inner.ring.len() > RING || (inner.bytes > RING_BYTES && inner.ring.len() > 1) {
            if let Some(old) = inner.ring.pop_front() {
                inner.bytes -= old.data.len();
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(item);
    }

    /// The SSE id of an event.
    pub fn id(&self, item: &Item) -> String {
        format!("{}-{}", self.boot, item.seq)
    }

    /// The sequence number a `Last-Event-ID` names, if it is this
    /// process's; `None` for an id of another process or a malformed one.
    fn seq_of(&self, id: &str) -> Option<u64> {
        let (boot, seq) = id.split_once('-')?;
        (boot.parse::<u64>().ok()? == self.boot).then_some(())?;
        seq.parse().ok()
    }

    /// Subscribes: what to replay first, the live receiver, and the
    /// newest sequence number published so far. Taken under the lock, so
    /// nothing is published between the replay and the live stream.
    pub fn subscribe(&self, last_event_id: Option<&str>) -> (Resume, broadcast::Receiver<Arc<Item>>, u64) {
        let inner = self.lock();
        let head = inner.next - 1;
        let rx = self.tx.subscribe();
        let resume = match last_event_id {
            None => Resume::From(Vec::new()),
            Some(id) => match self.seq_of(id) {
                Some(seq) => replay_after(&inner, seq),
                None => Resume::Gap,
            },
        };
        (resume, rx, head)
    }

    /// A lagging watcher's fresh start: the events after `seq` and a new
    /// receiver, taken under the lock like [`Feed::subscribe`].
    pub fn since(&self, seq: u64) -> (Resume, broadcast::Receiver<Arc<Item>>) {
        let inner = self.lock();
        (replay_after(&inner, seq), self.tx.subscribe())
    }
}

fn replay_after(inner: &Inner, seq: u64) -> Resume {
    if seq >= inner.next {
        // From the future: not ours.
        return Resume::Gap;
    }
    let oldest = inner.ring.front().map(|i| i.seq).unwrap_or(inner.next);
    if seq + 1 < oldest {
        return Resume::Gap;
    }
    Resume::From(inner.ring.iter().filter(|i| i.seq > seq).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(r: Resume) -> Option<Vec<u64>> {
        match r {
            Resume::From(v) => Some(v.iter().map(|i| i.seq).collect()),
            Resume::Gap => None,
        }
    }

    #[test]
    fn a_reconnect_replays_what_came_after_its_last_id_and_nothing_else() {
        let f = Feed::new();
        for i in 0..5 {
            f.publish("task", serde_json::json!({ "i": i }));
        }
        let (r, _, _) = f.subscribe(Some(&format!("{}-3", f.boot)));
        assert_eq!(seqs(r), Some(vec![4, 5]));
        let (r, _, _) = f.subscribe(Some(&format!("{}-5", f.boot)));
        assert_eq!(seqs(r), Some(vec![]));
    }

    #[test]
    fn an_id_of_another_process_or_one_past_the_ring_is_a_gap() {
        let f = Feed::new();
        f.publish("task", serde_json::json!({}));
        assert!(seqs(f.subscribe(Some(&format!("{}-1", f.boot + 1))).0).is_none());
        assert!(seqs(f.subscribe(Some("garbage")).0).is_none());
        assert!(seqs(f.subscribe(Some(&format!("{}-9", f.boot))).0).is_none());
        for _ in 0..RING + 10 {
            f.publish("step", serde_json::json!({}));
        }
        assert!(seqs(f.subscribe(Some(&format!("{}-1", f.boot))).0).is_none());
        let last = (RING + 11) as u64;
        assert_eq!(seqs(f.since(last - 2).0), Some(vec![last - 1, last]));
    }

    #[test]
    fn the_ring_is_bounded_by_bytes_too() {
        let f = Feed::new();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..40 {
            f.publish("step", serde_json::json!({ "payload": big }));
        }
        let inner = f.lock();
        assert!(
            inner.bytes <= RING_BYTES && inner.ring.len() < 40,
            "{} events",
            inner.ring.len()
        );
        assert_eq!(inner.bytes, inner.ring.iter().map(|i| i.data.len()).sum::<usize>());
    }
}
