//! placeholder
pub mod ring;
pub mod strategy;
