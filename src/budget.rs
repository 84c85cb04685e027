//! Spending budgets: what a model call costs, how much an agent spent in
//! its window, and when a spent window has room again. Pure arithmetic
//! over the `llm` journal steps the ledger hands back ([`LlmUsage`]); the
//! supervisor decides what to do with the answers (pause, resume, stop a
//! task), and the config decoders build [`BudgetSpec`] and [`Prices`].
//!
//! Spend is always recomputed from the journal rather than counted in
//! memory, so a restart of agentd, or of the agent, loses none of it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ledger::LlmUsage;

/// The window `agentd spend` reports over for an agent without a budget.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(86_400);

/// `budget:` of an agent (or of `defaults`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSpec {
    /// Most tokens (input + output) in any window of `per`.
    pub tokens: Option<u64>,
    /// Most US dollars in any window of `per`, at [`Prices`].
    pub cost_usd: Option<f64>,
    /// The rolling window.
    pub per: Duration,
    pub on_exceed: OnExceed,
}

/// What happens to the running task when a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// The task runs to its end; the agent takes no next one.
    Finish,
    /// The task is cancelled at once.
    Stop,
}

impl OnExceed {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExceed::Finish => "finish",
            OnExceed::Stop => "stop",
        }
    }
}

/// US dollars per million tokens of one model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Prompt tokens served from the provider's cache.
    pub cached_input: f64,
}

impl Price {
    /// USD for one call's tokens (`cached` is the part of `input` served
    /// from the provider's cache).
    pub fn cost(&self, input: i64, output: i64, cached: i64) -> f64 {
        let cached = cached.clamp(0, input.max(0));
        let fresh = input.max(0) - cached;
        (fresh as f64 * self.input + cached as f64 * self.cached_input + output.max(0) as f64 * self.output)
            / 1_000_000.0
    }
}

/// `prices:`, over the built-in [`DEFAULT_PRICES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prices(pub BTreeMap<String, Price>);

/// List prices (USD per million tokens: input, output, cached input) of
/// common models when this table was written; `prices:` overrides or adds.
pub const DEFAULT_PRICES: &[(&str, f64, f64, f64)] = &[
    ("gpt-4o", 2.50, 10.00, 1.25),
    ("gpt-4o-mini", 0.15, 0.60, 0.075),
    ("gpt-4.1", 2.00, 8.00, 0.50),
    ("gpt-4.1-mini", 0.40, 1.60, 0.10),
    ("gpt-4.1-nano", 0.10, 0.40, 0.025),
    ("o3", 2.00, 8.00, 0.50),
    ("o4-mini", 1.10, 4.40, 0.275),
    ("claude-sonnet-4", 3.00, 15.00, 0.30),
    ("claude-opus-4", 15.00, 75.00, 1.50),
    ("claude-3-5-haiku", 0.80, 4.00, 0.08),
];

impl Default for Prices {
    fn default() -> Prices {
        Prices(
            DEFAULT_PRICES
                .iter()
                .map(|&(m, input, output, cached_input)| {
                    (
                        m.to_owned(),
                        Price {
                            input,
                            output,
                            cached_input,
                        },
                    )
                })
                .collect(),
        )
    }
}

impl Prices {
    /// The model's price: by its name, else by the name after a provider
    /// prefix (`openai/gpt-4o`). `None`: the model has no known cost.
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.0
            .get(model)
            .or_else(|| model.rsplit_once('/').and_then(|(_, m)| self.0.get(m)))
    }

    /// What one call cost, or `None` for a model without a price.
    pub fn cost(&self, u: &LlmUsage) -> Option<f64> {
        let p = self.get(u.model.as_deref()?)?;
        Some(p.cost(u.input_tokens, u.output_tokens, u.cached_tokens))
    }
}

/// What a set of model calls spent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub calls: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub cost_usd: f64,
    /// Models called that have no price (their calls cost nothing here).
    pub unpriced: BTreeSet<String>,
}

impl Spent {
    pub fn tokens(&self) -> i64 {
        self.input_tokens + self.output_tokens
    }

    fn add(&mut self, u: &LlmUsage, prices: &Prices) {
        self.calls += u.calls.max(0) as u64;
        self.input_tokens += u.input_tokens;
        self.output_tokens += u.output_tokens;
        self.cached_tokens += u.cached_tokens;
        match prices.cost(u) {
            Some(c) => self.cost_usd += c,
            None => {
                self.unpriced
                    .insert(u.model.clone().unwrap_or_else(|| "(unrecorded)".into()));
            }
        }
    }
}

pub fn spent(usage: &[LlmUsage], prices: &Prices) -> Spent {
    let mut s = Spent::default();
    for u in usage {
        s.add(u, prices);
    }
    s
}

/// Spend per model, for `agentd spend`.
pub fn by_model(usage: &[LlmUsage], prices: &Prices) -> BTreeMap<String, Spent> {
    let mut out: BTreeMap<String, Spent> = BTreeMap::new();
    for u in usage {
        let model = u.model.clone().unwrap_or_else(|| "(unrecorded)".into());
        out.entry(model).or_default().add(u, prices);
    }
    out
}

impl BudgetSpec {
    /// Whether `s` has reached a limit (reaching it counts: a budget of 100
    /// tokens is used up at 100).
    pub fn exceeded(&self, s: &Spent) -> bool {
        self.tokens.is_some_and(|t| s.tokens() >= t as i64) || self.cost_usd.is_some_and(|c| s.cost_usd >= c)
    }

    /// What is left of each limit the budget sets.
    pub fn left(&self, s: &Spent) -> (Option<i64>, Option<f64>) {
        (
            self.tokens.map(|t| (t as i64 - s.tokens()).max(0)),
            self.cost_usd.map(|c| (c - s.cost_usd).max(0.0)),
        )
    }

    /// The window's start for a reading taken at `now_ms`.
    pub fn since(&self, now_ms: i64) -> i64 {
        now_ms - self.per.as_millis() as i64
    }

    /// When (ms since the epoch) a window that is used up has room again:
    /// the moment enough of its oldest calls have aged out of it. `usage`
    /// is the window's calls, oldest first. `None` when it has room now.
    pub fn room_at(&self, usage: &[LlmUsage], prices: &Prices) -> Option<i64> {
        let mut s = spent(usage, prices);
        if !self.exceeded(&s) {
            return None;
        }
        let per = self.per.as_millis() as i64;
        for u in usage {
            let mut one = Spent::default();
            one.add(u, prices);
            s.input_tokens -= one.input_tokens;
            s.output_tokens -= one.output_tokens;
            s.cost_usd -= one.cost_usd;
            if !self.exceeded(&s) {
                return Some(u.at + per);
            }
        }
        // A limit of zero is never satisfied; look again a window later.
        Some(usage.last().map_or(0, |u| u.at) + per)
    }
}

/// One agent's spend over a window, by model: what `agentd spend` and the
/// control socket's `Spend` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpend {
    pub agent: String,
    /// The window, e.g. `1d`.
    pub per: String,
    /// Its start, milliseconds since the epoch.
    pub since: i64,
    pub tokens: i64,
    pub cost_usd: f64,
    pub models: Vec<ModelSpend>,
    /// The agent's budget, when it has one (and its window is `per`).
    pub budget: Option<BudgetSpec>,
    pub left_tokens: Option<i64>,
    pub left_cost_usd: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpend {
    pub model: String,
    pub calls: u64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    /// `None` for a model without a price.
    pub cost_usd: Option<f64>,
}

/// The report for one agent: `usage` is its calls since `since`.
pub fn report(
    agent: &str,
    per: Duration,
    since: i64,
    usage: &[LlmUsage],
    prices: &Prices,
    budget: Option<&BudgetSpec>,
) -> AgentSpend {
    let total = spent(usage, prices);
    let models = by_model(usage, prices)
        .into_iter()
        .map(|(model, s)| ModelSpend {
            cost_usd: s.unpriced.is_empty().then_some(s.cost_usd),
            model,
            calls: s.calls,
            input_tokens: s.input_tokens,
            output_tokens: s.output_tokens,
            cached_tokens: s.cached_tokens,
        })
        .collect();
    // What is left only means something over the budget's own window.
    let budget = budget.filter(|b| b.per == per);
    let (left_tokens, left_cost_usd) = budget.map(|b| b.left(&total)).unwrap_or((None, None));
    AgentSpend {
        agent: agent.to_owned(),
        per: humantime::format_duration(per).to_string(),
        since,
        tokens: total.tokens(),
        cost_usd: total.cost_usd,
        models,
        budget: budget.cloned(),
        left_tokens,
        left_cost_usd,
    }
}

/// `2M`, `500k`, `1500`: a count of tokens.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1_000.0),
        Some((i, 'M' | 'm')) => (&t[..i], 1_000_000.0),
        Some((i, 'G' | 'g' | 'B' | 'b')) => (&t[..i], 1_000_000_000.0),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{s:?} is not a token count: write e.g. 2M, 500k or 1500"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?} is not a token count: it must not be negative"));
    }
    Ok((v * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(model: &str, input: i64, output: i64, at: i64) -> LlmUsage {
        LlmUsage {
            agent: "a".into(),
            calls: 1,
            model: Some(model.into()),
            input_tokens: input,
            output_tokens: output,
            cached_tokens: 0,
            at,
        }
    }

    #[test]
    fn costs_follow_the_price_table_and_unknown_models_cost_nothing() {
        let p = Prices::default();
        let mut u = call("gpt-4o", 1_000_000, 100_000, 0);
        assert_eq!(p.cost(&u), Some(2.5 + 1.0));
        u.cached_tokens = 500_000;
        assert_eq!(p.cost(&u), Some(1.25 + 0.625 + 1.0));
        assert_eq!(p.cost(&call("openai/gpt-4o-mini", 1_000_000, 0, 0)), Some(0.15));
        let s = spent(&[call("my-local-model", 10, 10, 0)], &p);
        assert_eq!((s.tokens(), s.cost_usd), (20, 0.0));
        assert!(s.unpriced.contains("my-local-model"));
    }

    #[test]
    fn a_used_up_window_has_room_when_its_oldest_calls_age_out() {
        let b = BudgetSpec {
            tokens: Some(100),
            cost_usd: None,
            per: Duration::from_secs(10),
            on_exceed: OnExceed::Finish,
        };
        let p = Prices::default();
        let usage = [
            call("m", 40, 0, 1_000),
            call("m", 40, 0, 2_000),
            call("m", 30, 0, 3_000),
        ];
        assert!(b.exceeded(&spent(&usage, &p)));
        // 110 tokens: dropping the first call (40) leaves 70, under 100.
        assert_eq!(b.room_at(&usage, &p), Some(11_000));
        assert_eq!(b.room_at(&usage[1..], &p), None);
        assert_eq!(b.left(&spent(&usage[1..], &p)), (Some(30), None));
    }

    #[test]
    fn token_counts_take_k_and_m_suffixes() {
        assert_eq!(parse_count("2M"), Ok(2_000_000));
        assert_eq!(parse_count("1.5k"), Ok(1_500));
        assert_eq!(parse_count("1500"), Ok(1_500));
        assert!(parse_count("lots").is_err());
        assert!(parse_count("-3").is_err());
    }
}
