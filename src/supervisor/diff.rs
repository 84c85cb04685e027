//! What a reload changes, decided before anything is done (vector's
//! `ConfigDiff` is the model): a pure comparison of the running agents'
//! specs with a new config, by agent name and whole normalised spec.
//! [`super::Supervisor`] applies it: stop the removed, start the added,
//! restart the changed, leave the unchanged alone (same process).

use std::collections::BTreeMap;

use crate::config::{AgentSpec, Config};

/// The agents a new config adds, changes and removes.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigDiff {
    /// In the new config only, in its order.
    pub add: Vec<AgentSpec>,
    /// In both, with a different spec (the new one here), in the new
    /// config's order.
    pub change: Vec<AgentSpec>,
    /// Running now, gone from the new config, by name.
    pub remove: Vec<String>,
    /// In both, identical.
    pub unchanged: Vec<String>,
}

impl ConfigDiff {
    /// Compares the specs agents run with now (`running`, by name) with
    /// `new`.
    pub fn between(running: &BTreeMap<String, &AgentSpec>, new: &Config) -> ConfigDiff {
        let mut diff = ConfigDiff {
            remove: running
                .keys()
                .filter(|name| new.agent(name).is_none())
                .cloned()
                .collect(),
            ..ConfigDiff::default()
        };
        for spec in &new.agents {
            match running.get(spec.name.as_str()) {
                None => diff.add.push(spec.clone()),
                Some(old) if *old != spec => diff.change.push(spec.clone()),
                Some(_) => diff.unchanged.push(spec.name.to_string()),
            }
        }
        diff
    }

    /// The summary a reload answers with.
    pub fn summary(&self) -> serde_json::Value {
        let names = |specs: &[AgentSpec]| specs.iter().map(|s| s.name.to_string()).collect::<Vec<_>>();
        serde_json::json!({
            "added": names(&self.add),
            "removed": self.remove,
            "restarted": names(&self.change),
            "unchanged": self.unchanged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both versions from one file, as a reload reads them.
    fn config(dir: &std::path::Path, text: &str) -> Config {
        let path = dir.join("agentd.yaml");
        std::fs::write(&path, text).expect("write");
        crate::config::load(&path).expect("valid config")
    }

    #[test]
    fn agents_are_added_changed_removed_or_left_alone_by_name_and_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = config(
            dir.path(),
            "agents:\n  - {name: keep, model: m}\n  - {name: edit, model: m}\n  - {name: gone, model: m}\n",
        );
        let new = config(
            dir.path(),
            "agents:\n  - {name: fresh, model: m}\n  - {name: edit, model: other}\n  - {name: keep, model: m}\n",
        );
        let running: BTreeMap<String, &AgentSpec> = old.agents.iter().map(|a| (a.name.to_string(), a)).collect();
        let d = ConfigDiff::between(&running, &new);
        let names = |v: &[AgentSpec]| v.iter().map(|a| a.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&d.add), ["fresh"]);
        assert_eq!(names(&d.change), ["edit"]);
        assert_eq!(d.change[0].model, "other");
        assert_eq!(d.remove, ["gone"]);
        assert_eq!(d.unchanged, ["keep"]);
        assert_eq!(
            d.summary(),
            serde_json::json!({"added": ["fresh"], "removed": ["gone"], "restarted": ["edit"], "unchanged": ["keep"]})
        );
        // The same config changes nothing.
        let same = ConfigDiff::between(&running, &old);
        assert!(same.add.is_empty() && same.change.is_empty() && same.remove.is_empty());
        assert_eq!(same.unchanged.len(), 3);
    }
}
