mod config;
mod ledger;
mod llm;
mod supervisor;
