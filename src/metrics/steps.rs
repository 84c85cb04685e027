//! What a journal step tells the metrics. Steps are the child's report of
//! everything it did (model calls, tool calls, sandbox runs); the payload
//! fields read here are written by `agent::runner` and `agent::bridge`.
//! A field that is missing (a step from an older child) counts as absent,
//! never as an error: metrics must not fail a task.

use serde_json::Value;

use super::{
    AgentLabels, BackendLabels, EgressBytesLabels, EgressLabels, Metrics, ModelLabels, ServerLabels, ToolLabels,
};
use crate::domain::{NewStep, StepKind};

/// The countable facts of one step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepFacts {
    Model {
        ok: bool,
        retries: u64,
        input_tokens: u64,
        output_tokens: u64,
        seconds: Option<f64>,
    },
    Tool {
        name: String,
        error: bool,
        seconds: Option<f64>,
    },
    Sandbox {
        backend: String,
        run: SandboxRun,
    },
    Egress {
        allowed: bool,
        sent: u64,
        received: u64,
    },
    /// Nothing to count.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SandboxRun {
    Ran {
        timed_out: bool,
        seconds: f64,
    },
    /// Refused before running: a path check, a sandbox error, an invalid block.
    Denied,
    /// A `:create` block: written by agentd, not run.
    Created,
}

impl StepFacts {
    pub fn of(step: &NewStep) -> StepFacts {
        let p = &step.payload;
        let seconds = step.latency_ms.map(|ms| ms.max(0) as f64 / 1000.0);
        match step.kind {
            StepKind::Llm | StepKind::LlmError => StepFacts::Model {
                ok: step.kind == StepKind::Llm,
                retries: p["retries"].as_array().map_or(0, |r| r.len() as u64),
                input_tokens: step.input_tokens.max(0) as u64,
                output_tokens: step.output_tokens.max(0) as u64,
                seconds,
            },
            StepKind::Tool | StepKind::Bridge => StepFacts::Tool {
                name: p["name"].as_str().unwrap_or("").to_owned(),
                error: p.get("error").is_some_and(|e| !e.is_null()) || p["is_error"] == Value::Bool(true),
                seconds,
            },
            StepKind::Fence => {
                let backend = p["backend"].as_str().unwrap_or("unknown").to_owned();
                let run = match p["outcome"].as_str() {
                    Some("ran") => SandboxRun::Ran {
                        timed_out: p["timed_out"] == Value::Bool(true),
                        seconds: p["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0,
                    },
                    Some("created") => SandboxRun::Created,
                    Some("not_run") => SandboxRun::Denied,
                    _ => return StepFacts::None,
                };
                StepFacts::Sandbox { backend, run }
            }
            StepKind::Egress => StepFacts::Egress {
                allowed: p["decision"] == "allowed",
                sent: p["sent"].as_u64().unwrap_or(0),
                received: p["received"].as_u64().unwrap_or(0),
            },
            StepKind::ToolCallsCapped
            | StepKind::Cancel
            | StepKind::Approval
            | StepKind::ApprovalAnswer
            | StepKind::Notify
            | StepKind::Other(_) => StepFacts::None,
        }
    }
}

pub(super) fn count(m: &Metrics, agent: &str, model: &str, facts: &StepFacts) {
    match facts {
        StepFacts::Model {
            ok,
            retries,
            input_tokens,
            output_tokens,
            seconds,
        } => {
            let l = ModelLabels {
                agent: agent.to_owned(),
                model: model.to_owned(),
            };
            m.model_requests.get_or_create(&l).inc();
            if !ok {
                m.model_errors.get_or_create(&l).inc();
            }
            m.model_retries.get_or_create(&l).inc_by(*retries);
            m.input_tokens.get_or_create(&l).inc_by(*input_tokens);
            m.output_tokens.get_or_create(&l).inc_by(*output_tokens);
            if let Some(s) = seconds {
                m.model_duration.get_or_create(&l).observe(*s);
            }
        }
        StepFacts::Tool { name, error, seconds } => {
            let l = ToolLabels {
                agent: agent.to_owned(),
                tool: m.tool_label(agent, name),
            };
            m.tool_calls.get_or_create(&l).inc();
            if *error {
                m.tool_errors.get_or_create(&l).inc();
            }
            if let Some(s) = seconds {
                m.tool_duration.get_or_create(&l).observe(*s);
            }
        }
        StepFacts::Sandbox { backend, run } => {
            let l = BackendLabels {
                backend: backend.clone(),
            };
            match run {
                SandboxRun::Ran { timed_out, seconds } => {
                    m.sandbox_runs.get_or_create(&l).inc();
                    m.sandbox_duration.get_or_create(&l).observe(*seconds);
                    if *timed_out {
                        m.sandbox_timeouts.get_or_create(&l).inc();
                    }
                }
                SandboxRun::Denied => {
                    m.sandbox_denials.get_or_create(&l).inc();
                }
                SandboxRun::Created => {}
            }
        }
        StepFacts::Egress {
            allowed,
            sent,
            received,
        } => {
            let decision = if *allowed { "allowed" } else { "denied" };
            m.egress_connections
                .get_or_create(&EgressLabels {
                    agent: agent.to_owned(),
                    decision: decision.to_owned(),
                })
                .inc();
            for (direction, n) in [("sent", sent), ("received", received)] {
                m.egress_bytes
                    .get_or_create(&EgressBytesLabels {
                        agent: agent.to_owned(),
                        direction: direction.to_owned(),
                    })
                    .inc_by(*n);
            }
        }
        StepFacts::None => {}
    }
}

impl Metrics {
    pub fn restarted(&self, agent: &str) {
        self.restarts
            .get_or_create(&AgentLabels {
                agent: agent.to_owned(),
            })
            .inc();
    }

    pub fn mcp_reconnected(&self, agent: &str, server: &str, count: u64) {
        self.mcp_reconnects
            .get_or_create(&ServerLabels {
                agent: agent.to_owned(),
                server: server.to_owned(),
            })
            .inc_by(count);
    }

    pub fn subscription_fired(&self, agent: &str, server: &str) {
        self.subscriptions_fired
            .get_or_create(&ServerLabels {
                agent: agent.to_owned(),
                server: server.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn step(kind: StepKind, payload: Value) -> NewStep {
        NewStep {
            kind,
            payload,
            input_tokens: 12,
            output_tokens: 3,
            latency_ms: Some(250),
        }
    }

    #[test]
    fn steps_become_facts() {
        let llm = step(StepKind::Llm, json!({"retries": [{"attempt": 1}]}));
        assert_eq!(
            StepFacts::of(&llm),
            StepFacts::Model {
                ok: true,
                retries: 1,
                input_tokens: 12,
                output_tokens: 3,
                seconds: Some(0.25)
            }
        );
        let failed_tool = step(StepKind::Bridge, json!({"name": "fetch", "error": "refused"}));
        assert!(matches!(
            StepFacts::of(&failed_tool),
            StepFacts::Tool { error: true, .. }
        ));
        let ok_tool = step(StepKind::Tool, json!({"name": "fetch", "is_error": false}));
        assert!(matches!(StepFacts::of(&ok_tool), StepFacts::Tool { error: false, .. }));
        let timed_out = step(
            StepKind::Fence,
            json!({"backend": "bwrap", "outcome": "ran", "timed_out": true, "duration_ms": 1500}),
        );
        assert_eq!(
            StepFacts::of(&timed_out),
            StepFacts::Sandbox {
                backend: "bwrap".into(),
                run: SandboxRun::Ran {
                    timed_out: true,
                    seconds: 1.5
                }
            }
        );
        // An older child's fence step, without the fields: nothing counted.
        assert_eq!(
            StepFacts::of(&step(StepKind::Fence, json!({"block": "sh"}))),
            StepFacts::None
        );
        let egress = json!({"host": "pypi.org", "decision": "allowed", "sent": 120, "received": 4096});
        assert_eq!(
            StepFacts::of(&step(StepKind::Egress, egress)),
            StepFacts::Egress {
                allowed: true,
                sent: 120,
                received: 4096
            }
        );
        assert_eq!(
            StepFacts::of(&step(StepKind::Egress, json!({"decision": "denied"}))),
            StepFacts::Egress {
                allowed: false,
                sent: 0,
                received: 0
            }
        );
    }
}
