//! Alerts: takes findings, gives the shapes SIEMs ingest (OCSF 1.x Detection Finding; the native finding JSON as is).

pub mod ocsf;
