//! `edgejoin export`: the pipeline a config describes, written as another engine's job, so the
//! config tested on a gateway is the job deployed on a cluster when a site outgrows one device
//! (docs/FLEET.md). One target today: a PySpark Structured Streaming job ([`spark`]).

pub mod spark;

use thiserror::Error;

/// What an export cannot express; the message names the setting and what to do.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExportError {
    #[error(
        "stream \"{stream}\": format = \"postcard\" cannot be exported (the job has no postcard reader); \
         bridge such sensors as JSON for the cluster"
    )]
    Postcard { stream: String },
    #[error(
        "window \"{window}\" rolls up the session window \"{input}\": Spark gives a result the time of its end, \
         not of its start (SPEC §13.10), and a session's length varies, so this rollup cannot be written in Spark"
    )]
    RollupOfSession { window: String, input: String },
}
