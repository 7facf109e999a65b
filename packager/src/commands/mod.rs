//! One module per command.

pub mod build;
pub mod inspect;
pub mod pull;
pub mod push;
