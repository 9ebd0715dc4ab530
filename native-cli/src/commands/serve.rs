//! `apr serve MODEL`: the OpenAI-compatible server (see `crate::server`).

use anyhow::Result;

use crate::args::ServeArgs;
use crate::server::{self, config::ServeConfig};

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    server::run(ServeConfig::resolve(args)?)
}
