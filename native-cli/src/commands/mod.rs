//! One module per subcommand. Each resolves its flags and calls the core.

pub(crate) mod bench;
pub(crate) mod chat;
pub(crate) mod check;
pub(crate) mod convert;
pub(crate) mod eval;
pub(crate) mod gpu;
pub(crate) mod import;
pub(crate) mod inspect;
pub(crate) mod model;
pub(crate) mod profile;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod serve;
pub(crate) mod showcase;
pub(crate) mod tokenize;
pub(crate) mod trace;
pub(crate) mod validate;
