//! One module per subcommand. Each resolves its flags and calls the core.

pub(crate) mod check;
pub(crate) mod convert;
pub(crate) mod import;
pub(crate) mod inspect;
pub(crate) mod validate;
