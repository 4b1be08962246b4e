//! Access contracts and detectors: takes observations and the rules, gives findings, and keeps per-identity state for the inventory.

pub mod state;
