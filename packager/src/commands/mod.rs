//! One module per command.

pub mod apply;
pub mod build;
pub mod check;
pub mod inspect;
pub mod manifests;
pub mod playground;
pub mod pull;
pub mod push;
pub mod route;
pub mod run;
pub mod stats;
