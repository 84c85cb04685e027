//! Cassettes: recorded model replies, played back without a network.
//!
//! `agentd CONFIG --record DIR` appends every exchange of agent `A` to
//! `DIR/A.cassette.json`; `model: replay:PATH` serves the replies of a
//! cassette in order. This module owns the file format, the rule that
//! decides whether a replayed request still fits its recording, and the
//! atomic writes. It never talks to a provider.
//!
//! # Format
//!
//! One JSON document, meant to be read and edited by hand:
//!
//! ```json
//! {
//!   "agentd_cassette": 1,
//!   "agent": "notes",
//!   "model": "gpt-4o-mini",
//!   "exchanges": [
//!     {
//!       "request": { "last_role": "user", "tools": ["read_file"],
//!                    "last_content": "notes.md changed: ..." },
//!       "response": {
//!         "content": null,
//!         "tool_calls": [{ "id": "call_1", "type": "function",
//!           "function": { "name": "read_file", "arguments": "{\"path\":\"notes.md\"}" } }],
//!         "finish_reason": "tool_calls",
//!         "usage": { "prompt_tokens": 120, "completion_tokens": 18 }
//!       }
//!     },
//!     {
//!       "request": { "last_role": "tool", "tool_results": ["call_1"], "tools": ["read_file"] },
//!       "response": { "content": "The notes list three open items.", "finish_reason": "stop" }
//!     }
//!   ]
//! }
//! ```
//!
//! `response` is a [`ChatResponse`] (`content`, `tool_calls`,
//! `finish_reason`, `usage`; all optional). `request` is a summary of what
//! the agent sent when the reply was recorded; every field is optional and
//! an absent field is not checked. `last_content` (the first 200 characters
//! of the last message) is only there to help a reader and is never compared.
//!
//! # Replay rule
//!
//! Replies are served in order, one per request, and the position survives
//! across the tasks of one client (one agent process). Request *contents*
//! are not compared (a user replays the quickstart with their own files);
//! the shape is. Exchange `n` fits a request when:
//! - `last_role` equals the role of the request's last message;
//! - `tool_results` equals, as a set, the ids of the tool messages at the
//!   end of the request (the calls being answered);
//! - every name in `tools` is offered by the request (more tools may be
//!   offered: servers gain tools between versions);
//! - every tool the recorded reply calls is offered by the request.
//!
//! Otherwise the request fails with [`LlmError::ReplayMismatch`] saying what
//! was expected and what came; past the last exchange it fails with
//! [`LlmError::ReplayExhausted`], unless the cassette says `"repeat": true`
//! (written by hand, never by the recorder): then it starts over.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{ChatMessage, ChatRequest, ChatResponse, LlmError};

/// The version this build reads and writes.
pub const CASSETTE_VERSION: u32 = 1;

/// How much of the last message a recording keeps for the reader.
const HINT_CHARS: usize = 200;

/// A whole cassette file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cassette {
    #[serde(rename = "agentd_cassette", default = "version_one")]
    pub version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Start over after the last exchange instead of failing: for demos
    /// and soak runs that replay the same conversation again and again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeat: bool,
    #[serde(default)]
    pub exchanges: Vec<Exchange>,
}

fn version_one() -> u32 {
    CASSETTE_VERSION
}

/// One request (summarised) and the reply the model gave to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    #[serde(default)]
    pub request: RequestSummary,
    pub response: ChatResponse,
}

/// The shape of a request, as matched on replay (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSummary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_results: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// For the reader only; never compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_content: Option<String>,
}

impl RequestSummary {
    /// Summarises a request as a recording stores it.
    pub fn of(req: &ChatRequest) -> RequestSummary {
        let last = req.messages.last();
        RequestSummary {
            last_role: last.map(|m| m.role().to_string()),
            tool_results: Some(answered_calls(req).into_iter().collect()),
            tools: Some(offered_tools(req).into_iter().collect()),
            last_content: last
                .and_then(|m| m.content())
                .map(|c| c.chars().take(HINT_CHARS).collect()),
        }
    }
}

impl Cassette {
    pub fn new(agent: Option<String>, model: Option<String>) -> Cassette {
        Cassette {
            version: CASSETTE_VERSION,
            agent,
            model,
            repeat: false,
            exchanges: Vec::new(),
        }
    }

    /// Reads and checks a cassette file.
    pub fn load(path: &Path) -> Result<Cassette, LlmError> {
        let err = |message: String| LlmError::Cassette {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let cassette: Cassette = serde_json::from_str(&text).map_err(|e| err(format!("not a valid cassette: {e}")))?;
        if cassette.version != CASSETTE_VERSION {
            return Err(err(format!(
                "format version {} is not supported (this agentd reads version {CASSETTE_VERSION})",
                cassette.version
            )));
        }
        Ok(cassette)
    }

    /// Writes the cassette so that `path` always holds a complete file:
    /// a temporary file in the same directory, synced, then renamed over.
    pub fn save(&self, path: &Path) -> Result<(), LlmError> {
        let io_err = |source| LlmError::Record {
            path: path.to_path_buf(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| io_err(std::io::Error::other(format!("cannot encode the cassette: {e}"))))?;
        text.push('\n');
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        // Makes the rename itself durable; failing to is not worth an error.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The ids answered by the tool messages at the end of a request.
fn answered_calls(req: &ChatRequest) -> BTreeSet<String> {
    req.messages
        .iter()
        .rev()
        .map_while(|m| match m {
            ChatMessage::Tool { tool_call_id, .. } => Some(tool_call_id.clone()),
            _ => None,
        })
        .collect()
}

fn offered_tools(req: &ChatRequest) -> BTreeSet<String> {
    req.tools.iter().map(|t| t.name.clone()).collect()
}

fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Why `exchange` does not fit `req`, as (expected, got); `None` if it fits.
fn mismatch(exchange: &Exchange, req: &ChatRequest) -> Option<(String, String)> {
    let want = &exchange.request;
    let last_role = req.messages.last().map(|m| m.role()).unwrap_or("none");
    if let Some(role) = &want.last_role {
        if role != last_role {
            return Some((
                format!("a request ending with a {role} message"),
                format!("a request ending with a {last_role} message"),
            ));
        }
    }
    if let Some(ids) = &want.tool_results {
        let want_ids: BTreeSet<String> = ids.iter().cloned().collect();
        let got_ids = answered_calls(req);
        if want_ids != got_ids {
            return Some((
                format!("answers to tool calls [{}]", list(&want_ids)),
                format!("answers to [{}]", list(&got_ids)),
            ));
        }
    }
    let offered = offered_tools(req);
    let needed: BTreeSet<String> = want
        .tools
        .iter()
        .flatten()
        .chain(exchange.response.tool_calls.iter().map(|c| &c.name))
        .cloned()
        .collect();
    let missing: BTreeSet<String> = needed.difference(&offered).cloned().collect();
    if !missing.is_empty() {
        return Some((
            format!("the tools [{}] on offer", list(&needed)),
            format!("the tools [{}] (missing: {})", list(&offered), list(&missing)),
        ));
    }
    None
}

/// Plays a cassette back, one reply per request.
#[derive(Debug)]
pub(crate) struct Player {
    path: PathBuf,
    exchanges: Vec<Exchange>,
    repeat: bool,
    next: Mutex<usize>,
}

impl Player {
    pub fn open(path: &Path) -> Result<Player, LlmError> {
        let cassette = Cassette::load(path)?;
        Ok(Player {
            path: path.to_path_buf(),
            exchanges: cassette.exchanges,
            repeat: cassette.repeat,
            next: Mutex::new(0),
        })
    }

    /// The next reply, if it fits `req`. The position only moves on a fit,
    /// so a mismatch fails this request and leaves the cassette where it is.
    pub fn next(&self, req: &ChatRequest) -> Result<ChatResponse, LlmError> {
        // A poisoned lock only means another caller panicked mid-replay;
        // the position itself is still a valid number.
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if self.repeat && *next >= self.exchanges.len() {
            *next = 0;
        }
        let Some(exchange) = self.exchanges.get(*next) else {
            return Err(LlmError::ReplayExhausted {
                path: self.path.clone(),
                len: self.exchanges.len(),
            });
        };
        if let Some((expected, got)) = mismatch(exchange, req) {
            return Err(LlmError::ReplayMismatch {
                path: self.path.clone(),
                index: *next + 1,
                expected,
                got,
            });
        }
        *next += 1;
        let mut reply = exchange.response.clone();
        reply.retries.clear();
        reply.fill_missing_ids();
        Ok(reply)
    }
}

/// Appends every exchange to `DIR/<agent>.cassette.json`.
#[derive(Debug)]
pub(crate) struct Recorder {
    path: PathBuf,
    cassette: Mutex<Cassette>,
}

impl Recorder {
    /// Opens (or creates) the agent's cassette in `dir`. An existing
    /// cassette is continued, so a restarted agent process does not lose
    /// what it recorded before; delete the file to start over. The file is
    /// written at once so an unwritable directory fails here, not after
    /// the first paid request.
    pub fn open(dir: &Path, agent: &str, model: &str) -> Result<Recorder, LlmError> {
        let path = dir.join(format!("{agent}.cassette.json"));
        std::fs::create_dir_all(dir).map_err(|source| LlmError::Record {
            path: path.clone(),
            source,
        })?;
        let cassette = if path.exists() {
            Cassette::load(&path)?
        } else {
            Cassette::new(Some(agent.to_string()), Some(model.to_string()))
        };
        cassette.save(&path)?;
        Ok(Recorder {
            path,
            cassette: Mutex::new(cassette),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, req: &ChatRequest, reply: &ChatResponse) -> Result<(), LlmError> {
        let mut cassette = self.cassette.lock().unwrap_or_else(|p| p.into_inner());
        let mut response = reply.clone();
        // Retries are an accident of that run, not part of the reply.
        response.retries.clear();
        cassette.exchanges.push(Exchange {
            request: RequestSummary::of(req),
            response,
        });
        cassette.save(&self.path)
    }
}
