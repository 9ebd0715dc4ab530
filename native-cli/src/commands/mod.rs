//! One module per subcommand. Each resolves its flags and calls the core.

pub(crate) mod import;
pub(crate) mod inspect;
