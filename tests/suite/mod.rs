mod config;
mod ledger;
