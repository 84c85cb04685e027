mod config;
mod fence;
mod ledger;
mod llm;
mod mcp;
mod sandbox;
mod supervisor;
mod systemd_unit;
