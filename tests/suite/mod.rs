mod config;
mod ledger;
mod supervisor;
