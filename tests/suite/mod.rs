mod config;
mod ledger;
mod llm;
mod supervisor;
mod systemd_unit;
