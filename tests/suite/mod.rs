mod config;
mod fence;
mod ledger;
mod sandbox;
mod supervisor;
