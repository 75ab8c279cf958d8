//! Fenice keeps a multi-tenant e-invoicing stack running when a whole cloud
//! provider dies. See DESIGN.md in the shared docs and README.md.

pub mod api;
pub mod apiserver;
pub mod app;
pub mod audit;
pub mod cli;
pub mod controller;
pub mod drill;
pub mod error_chain;
pub mod failover;
pub mod lab;
pub mod repo;
pub mod report_page;
pub mod site;
pub mod stack;
pub mod store;
pub mod testkit;
pub mod write_in_pieces;
