mod config;
mod ledger;
mod supervisor;
mod fence;
mod sandbox;
