//! `apr validate FILE`.
use anyhow::Result;

use crate::args::ValidateArgs;

pub(crate) fn run(_args: ValidateArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
