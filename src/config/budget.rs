//! `budget:` (per agent and in `defaults`) and the top-level `prices:`
//! table: decoded into [`crate::budget`]'s types. This module must never
//! compute spend; the supervisor does, from the ledger.

use std::time::Duration;

use marked_yaml::Node;

use crate::budget::{BudgetSpec, OnExceed, Price, Prices, parse_count};
use crate::yaml::{Cx, Map};

const BUDGET_KEYS: &[&str] = &["tokens", "cost_usd", "per", "on_exceed"];
const PRICE_KEYS: &[&str] = &["input", "output", "cached_input"];

pub(super) fn decode_budget(cx: &mut Cx, node: &Node, path: &str) -> Option<BudgetSpec> {
    let map = Map::open(cx, node, path, BUDGET_KEYS)?;
    let before = cx.errors.len();
    let tokens = map.get("tokens").and_then(|n| {
        let s = cx.string(n, &map.field("tokens"))?;
        let v = cx.check(n, &map.field("tokens"), parse_count(&s))?;
        if v == 0 {
            cx.error_at_node(n, &map.field("tokens"), "tokens must be at least 1");
        }
        Some(v)
    });
    let cost_usd = map.get("cost_usd").and_then(|n| {
        let v: f64 = cx.number(n, &map.field("cost_usd"), "an amount of US dollars, e.g. 5 or 0.50")?;
        if !(v.is_finite() && v > 0.0) {
            cx.error_at_node(n, &map.field("cost_usd"), "cost_usd must be more than 0");
        }
        Some(v)
    });
    if tokens.is_none() && cost_usd.is_none() && cx.errors.len() == before {
        cx.error_at(
            &map.start(),
            path,
            "a budget needs tokens, cost_usd or both (e.g. {tokens: 2M, cost_usd: 5, per: 1d})",
        );
    }
    let per = map.duration(cx, "per").unwrap_or(Duration::from_secs(86_400));
    if per.is_zero() {
        cx.error_at(&map.start(), &map.field("per"), "per must be longer than 0");
    }
    let on_exceed = match map.get("on_exceed") {
        None => OnExceed::Finish,
        Some(n) => match cx.string(n, &map.field("on_exceed")).as_deref() {
            Some("finish") => OnExceed::Finish,
            Some("stop") => OnExceed::Stop,
            Some(other) => {
                cx.error_at_node(
                    n,
                    &map.field("on_exceed"),
                    format!("unknown value {other:?}; expected finish or stop"),
                );
                OnExceed::Finish
            }
            None => OnExceed::Finish,
        },
    };
    (cx.errors.len() == before).then_some(BudgetSpec {
        tokens,
        cost_usd,
        per,
        on_exceed,
    })
}

/// `prices: {MODEL: {input, output, cached_input}}` in USD per million
/// tokens, over the built-in table. `cached_input` defaults to `input`.
pub(super) fn decode_prices(cx: &mut Cx, node: &Node, path: &str) -> Prices {
    let mut prices = Prices::default();
    let Some(models) = node.as_mapping() else {
        cx.error_at_node(node, path, "expected a mapping of model names to prices");
        return prices;
    };
    for (model, value) in models.iter() {
        let field = crate::yaml::join(path, model.as_str());
        let Some(map) = Map::open(cx, value, &field, PRICE_KEYS) else {
            continue;
        };
        let mut get = |key: &str| {
            let v: Option<f64> = map.number(cx, key, "US dollars per million tokens");
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                cx.error_at(&map.start(), &map.field(key), format!("{v} is not a price"));
            }
            v
        };
        let (input, output, cached) = (get("input"), get("output"), get("cached_input"));
        match (input, output) {
            (Some(input), Some(output)) => {
                prices.0.insert(
                    model.as_str().to_owned(),
                    Price {
                        input,
                        output,
                        cached_input: cached.unwrap_or(input),
                    },
                );
            }
            _ => cx.error_at(
                &map.start(),
                &field,
                "a price needs input and output (USD per million tokens)",
            ),
        }
    }
    prices
}
