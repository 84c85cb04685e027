//! Prometheus metrics: one registry the supervisor owns, counted from what
//! it already sees (lifecycle changes, task claims and ends, the journal
//! steps children send), and rendered in the OpenMetrics text format that
//! Prometheus scrapes (`agentd metrics`, the control request `Metrics`,
//! and `GET /metrics` on the HTTP listener).
//!
//! Labels are bounded by the config, never by traffic: agent, state,
//! trigger kind, model (the agent's configured model), tool (capped per
//! agent at [`MAX_TOOLS_PER_AGENT`], the rest counted as `_other`), sandbox
//! backend, MCP server name. Task ids, URIs and error texts never become
//! labels: each distinct value is a time series kept for good.
//!
//! [`Metrics`] is cheap to share (`Arc`): prometheus-client's families are
//! internally synchronised, so the ledger thread and the HTTP listener may
//! record or render while the event loop counts.

mod steps;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use steps::StepFacts;

/// Distinct tool names counted per agent; beyond this, `_other`. Tool lists
/// come from MCP servers, which may grow them at will (list_changed).
pub const MAX_TOOLS_PER_AGENT: usize = 64;
/// The tool label of calls past [`MAX_TOOLS_PER_AGENT`].
pub const OTHER_TOOL: &str = "_other";

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub agent: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskEndLabels {
    pub agent: String,
    pub trigger: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub agent: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolLabels {
    pub agent: String,
    pub tool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

/// Egress is counted per agent and outcome, never per host: denied names
/// come from model-written code, an unbounded label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    pub agent: String,
    /// allowed | denied
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressBytesLabels {
    pub agent: String,
    /// sent (code → upstream) | received
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub agent: String,
    /// The MCP server (a subscription's pattern is a URI: not a label).
    pub server: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, from 10 ms to about 80 s: model calls, tool calls, tasks.
fn slow_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Seconds, from 100 µs to about 1.6 s: ledger operations.
fn fast_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// Every metric agentd exports. Fields are public so the code that sees an
/// event counts it where it happens; the README lists them with meanings.
pub struct Metrics {
    registry: Registry,
    pub agents: Family<StateLabels, Gauge>,
    pub restarts: Family<AgentLabels, Counter>,
    pub tasks_started: Family<TaskLabels, Counter>,
    pub tasks_ended: Family<TaskEndLabels, Counter>,
    pub task_duration: Histograms<TaskLabels>,
    pub queue_depth: Family<AgentLabels, Gauge>,
    pub model_requests: Family<ModelLabels, Counter>,
    pub model_errors: Family<ModelLabels, Counter>,
    pub model_retries: Family<ModelLabels, Counter>,
    pub model_duration: Histograms<ModelLabels>,
    pub input_tokens: Family<ModelLabels, Counter>,
    pub output_tokens: Family<ModelLabels, Counter>,
    pub tool_calls: Family<ToolLabels, Counter>,
    pub tool_errors: Family<ToolLabels, Counter>,
    pub tool_duration: Histograms<ToolLabels>,
    pub sandbox_runs: Family<BackendLabels, Counter>,
    pub sandbox_timeouts: Family<BackendLabels, Counter>,
    pub sandbox_denials: Family<BackendLabels, Counter>,
    pub sandbox_duration: Histograms<BackendLabels>,
    pub egress_connections: Family<EgressLabels, Counter>,
    pub egress_bytes: Family<EgressBytesLabels, Counter>,
    pub subscriptions_fired: Family<ServerLabels, Counter>,
    pub mcp_reconnects: Family<ServerLabels, Counter>,
    pub ledger_duration: Histogram,
    pub trace_spans_dropped: Counter,
    /// USD spent on model calls, from `prices:` (models without a price
    /// add nothing).
    pub model_cost: Family<ModelLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub approvals_pending: Family<AgentLabels, Gauge>,
    /// Tool names seen per agent, for the cap.
    tools_seen: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("agentd");
        let m = Metrics {
            agents: Family::default(),
            restarts: Family::default(),
            tasks_started: Family::default(),
            tasks_ended: Family::default(),
            task_duration: Family::new_with_constructor(slow_buckets),
            queue_depth: Family::default(),
            model_requests: Family::default(),
            model_errors: Family::default(),
            model_retries: Family::default(),
            model_duration: Family::new_with_constructor(slow_buckets),
            input_tokens: Family::default(),
            output_tokens: Family::default(),
            tool_calls: Family::default(),
            tool_errors: Family::default(),
            tool_duration: Family::new_with_constructor(slow_buckets),
            sandbox_runs: Family::default(),
            sandbox_timeouts: Family::default(),
            sandbox_denials: Family::default(),
            sandbox_duration: Family::new_with_constructor(slow_buckets),
            egress_connections: Family::default(),
            egress_bytes: Family::default(),
            subscriptions_fired: Family::default(),
            mcp_reconnects: Family::default(),
            ledger_duration: fast_buckets(),
            trace_spans_dropped: Counter::default(),
            model_cost: Family::default(),
            approvals_pending: Family::default(),
            tools_seen: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        r.register(
            "model_cost_usd",
            "USD spent on model calls by model, priced from prices: (unpriced models add nothing)",
            m.model_cost.clone(),
        );
        r.register(
            "approvals_pending",
            "Approval requests waiting for an answer, per agent (refreshed at each scrape)",
            m.approvals_pending.clone(),
        );
        r.register(
            "build",
            "agentd's version (always 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register("agents", "Agents by lifecycle state", m.agents.clone());
        r.register(
            "agent_restarts",
            "Restarts of an agent's process by its restart policy",
            m.restarts.clone(),
        );
        r.register(
            "tasks_started",
            "Tasks handed to an agent's process, by trigger kind (attempts count each)",
            m.tasks_started.clone(),
        );
        r.register(
            "tasks_ended",
            "Task attempts that ended, by trigger kind and final state (queued: interrupted and re-queued)",
            m.tasks_ended.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "Time from handing a task to its process until it ended",
            Unit::Seconds,
            m.task_duration.clone(),
        );
        r.register(
            "queue_depth",
            "Queued tasks per agent (refreshed at each scrape)",
            m.queue_depth.clone(),
        );
        r.register(
            "model_requests",
            "Model requests (completed or failed) by model",
            m.model_requests.clone(),
        );
        r.register(
            "model_errors",
            "Model requests that failed after their retries",
            m.model_errors.clone(),
        );
        r.register(
            "model_retries",
            "Retries of model requests (rate limits, server errors)",
            m.model_retries.clone(),
        );
        r.register_with_unit(
            "model_request_duration",
            "Model request latency, retries included",
            Unit::Seconds,
            m.model_duration.clone(),
        );
        r.register(
            "model_input_tokens",
            "Prompt tokens the provider reported (or agentd estimated)",
            m.input_tokens.clone(),
        );
        r.register(
            "model_output_tokens",
            "Completion tokens the provider reported (or agentd estimated)",
            m.output_tokens.clone(),
        );
        r.register(
            "tool_calls",
            "MCP tool calls (by the model or through the tool bridge) by tool",
            m.tool_calls.clone(),
        );
        r.register(
            "tool_errors",
            "Tool calls that failed or returned an error result",
            m.tool_errors.clone(),
        );
        r.register_with_unit(
            "tool_call_duration",
            "Tool call latency",
            Unit::Seconds,
            m.tool_duration.clone(),
        );
        r.register("sandbox_runs", "Code blocks run in the sandbox", m.sandbox_runs.clone());
        r.register(
            "egress_connections",
            "Connection attempts of sandboxed code through the egress proxy, by decision",
            m.egress_connections.clone(),
        );
        r.register_with_unit(
            "egress",
            "Bytes sandboxed code moved through the egress proxy",
            Unit::Bytes,
            m.egress_bytes.clone(),
        );
        r.register(
            "sandbox_timeouts",
            "Sandbox runs killed at their time limit",
            m.sandbox_timeouts.clone(),
        );
        r.register(
            "sandbox_denials",
            "Code blocks refused before running (path checks, sandbox errors, invalid blocks)",
            m.sandbox_denials.clone(),
        );
        r.register_with_unit(
            "sandbox_run_duration",
            "Wall time of sandbox runs",
            Unit::Seconds,
            m.sandbox_duration.clone(),
        );
        r.register(
            "subscription_fires",
            "Resource updates (or polled tool changes) that became a trigger",
            m.subscriptions_fired.clone(),
        );
        r.register(
            "mcp_reconnects",
            "Connections to an MCP server made again after it was lost",
            m.mcp_reconnects.clone(),
        );
        r.register_with_unit(
            "ledger_operation_duration",
            "Time the ledger thread spends on one operation (mostly writes: enqueue, claim, journal step, finish)",
            Unit::Seconds,
            m.ledger_duration.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans dropped because the OTLP export queue was full",
            m.trace_spans_dropped.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text (which Prometheus and its parsers read).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The label for `tool` of `agent`: itself for the first
    /// [`MAX_TOOLS_PER_AGENT`] distinct names, then [`OTHER_TOOL`].
    pub fn tool_label(&self, agent: &str, tool: &str) -> String {
        let Ok(mut seen) = self.tools_seen.lock() else {
            return OTHER_TOOL.to_owned();
        };
        let names = seen.entry(agent.to_owned()).or_default();
        if names.contains(tool) || names.len() < MAX_TOOLS_PER_AGENT {
            names.insert(tool.to_owned());
            tool.to_owned()
        } else {
            OTHER_TOOL.to_owned()
        }
    }

    pub fn task_started(&self, agent: &str, trigger: &str) {
        self.tasks_started
            .get_or_create(&TaskLabels {
                agent: agent.to_owned(),
                trigger: trigger.to_owned(),
            })
            .inc();
    }

    /// A task attempt ended in `state` (`queued` when it was interrupted
    /// and goes back in the queue) after `took`.
    pub fn task_ended(&self, agent: &str, trigger: &str, state: &str, took: std::time::Duration) {
        let l = TaskLabels {
            agent: agent.to_owned(),
            trigger: trigger.to_owned(),
        };
        self.task_duration.get_or_create(&l).observe(took.as_secs_f64());
        self.tasks_ended
            .get_or_create(&TaskEndLabels {
                agent: l.agent,
                trigger: l.trigger,
                state: state.to_owned(),
            })
            .inc();
    }

    /// Sets the gauges of agent states and queue depths to what the
    /// supervisor holds now; states absent from `agents` read 0 and agents
    /// gone from the config are dropped.
    pub fn refresh(&self, states: &[&str], agents: &[(&str, &str, i64)]) {
        self.agents.clear();
        for s in states {
            let n = agents.iter().filter(|(_, st, _)| st == s).count();
            self.agents
                .get_or_create(&StateLabels { state: (*s).to_owned() })
                .set(n as i64);
        }
        self.queue_depth.clear();
        for (agent, _, queued) in agents {
            self.queue_depth
                .get_or_create(&AgentLabels {
                    agent: (*agent).to_owned(),
                })
                .set(*queued);
        }
    }

    /// Sets the pending approvals per agent; agents without any read 0.
    pub fn refresh_approvals(&self, agents: &[&str], pending: &BTreeMap<String, i64>) {
        self.approvals_pending.clear();
        for agent in agents {
            self.approvals_pending
                .get_or_create(&AgentLabels {
                    agent: (*agent).to_owned(),
                })
                .set(pending.get(*agent).copied().unwrap_or(0));
        }
    }

    /// Adds what one model call cost.
    pub fn model_cost(&self, agent: &str, model: &str, usd: f64) {
        let l = ModelLabels {
            agent: agent.to_owned(),
            model: model.to_owned(),
        };
        self.model_cost.get_or_create(&l).inc_by(usd);
    }

    /// Counts what one journal step says happened.
    pub fn step(&self, agent: &str, model: &str, facts: &StepFacts) {
        steps::count(self, agent, model, facts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_labels_are_capped_per_agent() {
        let m = Metrics::new();
        for i in 0..MAX_TOOLS_PER_AGENT {
            assert_eq!(m.tool_label("a", &format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.tool_label("a", "one_too_many"), OTHER_TOOL);
        // Known names keep their label; another agent has its own room.
        assert_eq!(m.tool_label("a", "t0"), "t0");
        assert_eq!(m.tool_label("b", "one_too_many"), "one_too_many");
    }

    #[test]
    fn cost_and_pending_approvals_render_per_agent() {
        let m = Metrics::new();
        m.model_cost("a", "gpt-4o", 0.25);
        m.model_cost("a", "gpt-4o", 0.5);
        let pending: BTreeMap<String, i64> = [("a".to_owned(), 2)].into();
        m.refresh_approvals(&["a", "b"], &pending);
        let text = m.render();
        assert!(
            text.contains("agentd_model_cost_usd_total{agent=\"a\",model=\"gpt-4o\"} 0.75"),
            "{text}"
        );
        assert!(text.contains("agentd_approvals_pending{agent=\"a\"} 2"), "{text}");
        assert!(text.contains("agentd_approvals_pending{agent=\"b\"} 0"), "{text}");
    }

    #[test]
    fn render_names_follow_the_conventions() {
        let m = Metrics::new();
        m.restarts.get_or_create(&AgentLabels { agent: "a".into() }).inc();
        m.ledger_duration.observe(0.002);
        let text = m.render();
        assert!(text.contains("agentd_agent_restarts_total{agent=\"a\"} 1"), "{text}");
        assert!(
            text.contains("agentd_ledger_operation_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("agentd_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
