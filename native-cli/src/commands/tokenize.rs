//! `apr tokenize MODEL --text T` and `apr detokenize MODEL IDS...`: the model's own tokenizer,
//! for debugging prompts.

use anyhow::{Context, Result, bail};

use super::model;
use crate::args::{DetokenizeArgs, TokenizeArgs};
use crate::output;

pub(crate) fn run(args: TokenizeArgs) -> Result<()> {
    let text = match (&args.text, &args.file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))?,
        (None, None) => bail!("pass --text TEXT or --file FILE"),
    };
    let opened = model::open(&args.model)?;
    let tokenizer = model::tokenizer(&opened.parse()?)?;
    let ids = tokenizer.encode(&text, !args.no_special)?;
    let line = if args.json {
        serde_json::to_string(&ids)?
    } else {
        ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
    };
    output::print(&format!("{line}\n"))?;
    Ok(())
}

pub(crate) fn run_detokenize(args: DetokenizeArgs) -> Result<()> {
    let mut ids = Vec::new();
    for arg in &args.ids {
        for part in arg.split([',', ' ']).filter(|p| !p.is_empty()) {
            let part = part.trim_matches(['[', ']']);
            if part.is_empty() {
                continue;
            }
            ids.push(
                part.parse::<u32>()
                    .with_context(|| format!("'{part}' is not a token id"))?,
            );
        }
    }
    let opened = model::open(&args.model)?;
    let tokenizer = model::tokenizer(&opened.parse()?)?;
    let text = tokenizer.decode(&ids, false)?;
    output::print(&format!("{text}\n"))?;
    Ok(())
}
