mod config;
mod ledger;
mod supervisor;
mod systemd_unit;
