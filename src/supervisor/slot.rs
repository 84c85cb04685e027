//! One agent as the supervisor holds it: its spec, its lifecycle, and the
//! bookkeeping around them (restarts, heartbeat, pause, schedules).
//!
//! The lifecycle is one enum whose variants carry exactly what each state
//! has: only a live process has a child handle and a start time, only a
//! running (or stopping) one may hold a task's claim, only a stopping one
//! knows what comes after its exit, only a backoff knows which restart it
//! waits for. A wrong combination (a claim without a process, a stopped
//! agent with a child) cannot be written.

use std::time::Instant;

use super::child::ChildHandle;
use super::restart::{Exit, Restarts};
use super::schedules::Armed;
use crate::config::AgentSpec;
use crate::domain::{Lease, TaskId};

/// What to do when a stopping child exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterExit {
    /// It crashed or exited on its own: ask the restart policy.
    Policy,
    /// Stopped on purpose: stay down.
    StayDown,
    /// Restarted on purpose (by hand, or its config changed).
    StartAgain,
    /// Removed from the config.
    Remove,
}

/// A live agent process.
pub(super) struct Live {
    pub handle: ChildHandle,
    pub since: Instant,
}

/// The task a running child holds, with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Claim {
    pub task: TaskId,
    pub lease: Lease,
}

pub(super) enum Lifecycle {
    /// No process, none wanted (never started, or stopped by hand).
    Stopped,
    /// Could not start, or crashed past its start limit: down until
    /// started by hand or its config changes.
    Failed,
    /// Waiting to restart after a crash; `generation` names the restart
    /// that is due, so a stale timer is recognised.
    Backoff { generation: u64 },
    /// Spawned, not ready yet (its MCP servers are connecting).
    Starting { child: Live },
    /// Ready, and maybe running a task.
    Running { child: Live, claim: Option<Claim> },
    /// Asked to stop; it may finish its task within the grace period.
    Stopping {
        child: Live,
        claim: Option<Claim>,
        then: AfterExit,
    },
}

impl Lifecycle {
    /// The state's name in status replies.
    pub fn name(&self) -> &'static str {
        match self {
            Lifecycle::Stopped => "stopped",
            Lifecycle::Failed => "failed",
            Lifecycle::Backoff { .. } => "backoff",
            Lifecycle::Starting { .. } => "starting",
            Lifecycle::Running { .. } => "running",
            Lifecycle::Stopping { .. } => "stopping",
        }
    }

    pub fn live(&self) -> Option<&Live> {
        match self {
            Lifecycle::Starting { child } | Lifecycle::Running { child, .. } | Lifecycle::Stopping { child, .. } => {
                Some(child)
            }
            Lifecycle::Stopped | Lifecycle::Failed | Lifecycle::Backoff { .. } => None,
        }
    }

    pub fn child(&self) -> Option<&ChildHandle> {
        self.live().map(|l| &l.handle)
    }

    /// The child, if it is the one of `generation` (events from older
    /// children are stale).
    pub fn child_of(&self, generation: u64) -> Option<&ChildHandle> {
        self.child().filter(|c| c.generation == generation)
    }

    pub fn claim(&self) -> Option<&Claim> {
        match self {
            Lifecycle::Running { claim, .. } | Lifecycle::Stopping { claim, .. } => claim.as_ref(),
            _ => None,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self, Lifecycle::Running { .. })
    }

    pub fn is_starting(&self) -> bool {
        matches!(self, Lifecycle::Starting { .. })
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Lifecycle::Failed)
    }
}

/// One agent's slot in the supervisor.
pub(super) struct Agent {
    pub spec: AgentSpec,
    pub life: Lifecycle,
    pub restarts: Restarts,
    pub restart_count: u32,
    pub last_exit: Option<Exit>,
    pub last_error: Option<String>,
    /// Paused (and why, as the ledger keeps it): triggers queue up,
    /// nothing is dispatched.
    pub pause: Option<crate::ledger::Pause>,
    /// When a budget pause is due to be looked at again (the window frees
    /// room then); a later timer replaces an earlier one.
    pub budget_recheck: u64,
    pub schedules: Vec<Armed>,
    /// A snapshot to restore once the child has stopped, before it restarts.
    pub pending_restore: Option<String>,
    /// When the child last answered a heartbeat (or became ready).
    pub last_pong: Instant,
    pub heartbeat_seq: u64,
    /// Set when the child was killed as hung: the cause of its exit.
    pub hung: Option<String>,
    /// The child's report of an MCP server it cannot reach: status shows
    /// the running agent as `degraded` with this error.
    pub degraded: Option<String>,
}

impl Agent {
    pub fn is_paused(&self) -> bool {
        self.pause.is_some()
    }

    pub fn new(spec: AgentSpec) -> Agent {
        let restarts = Restarts::new(spec.restart.clone());
        Agent {
            spec,
            life: Lifecycle::Stopped,
            restarts,
            restart_count: 0,
            last_exit: None,
            last_error: None,
            pause: None,
            budget_recheck: 0,
            schedules: Vec::new(),
            pending_restore: None,
            last_pong: Instant::now(),
            heartbeat_seq: 0,
            hung: None,
            degraded: None,
        }
    }
}
