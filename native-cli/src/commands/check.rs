//! `apr check FILE`.
use anyhow::Result;

use crate::args::CheckArgs;

pub(crate) fn run(_args: CheckArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
