//! `apr run MODEL -p PROMPT`: generate text. Without `-p`, every line of `--prompts-file` (or of
//! stdin) is a prompt with its own result.

use std::io::{self, BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::commands::model::Engine;
use anyhow::{Context, Result, bail};
use apr_core::chat_template::{ChatTemplate, Message, Role};
use apr_core::generate::{GenerateParams, Outcome, Session, Timings};
use serde::Serialize;

use super::model;
use crate::args::RunArgs;

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// One prompt's result, as `--json` prints it.
#[derive(Debug, Serialize)]
struct RunResult<'a> {
    model: &'a str,
    prompt: &'a str,
    text: &'a str,
    prompt_tokens: usize,
    generated_tokens: usize,
    token_ids: &'a [u32],
    stop_reason: apr_core::generate::StopReason,
    seed: u64,
    timings: Timings,
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    let prompts = prompts(&args)?;
    // Ctrl-C stops generating; what was printed stays printed.
    let _ = ctrlc::set_handler(|| CANCELLED.store(true, Ordering::SeqCst));
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let (mut session, load) = model::session(&parsed, &args.engine, opened.started)?;
    let template = if args.chat {
        Some(ChatTemplate::from_metadata(&parsed.metadata)?)
    } else {
        None
    };
    let sampler = model::sampler(&args.sampling)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        truncate_prompt: args.truncate,
        logprobs: None,
    };
    let mut load_ms = load.as_secs_f64() * 1e3;
    if !args.quiet && !args.json {
        eprintln!(
            "apr: loaded {} ({} layers, {}, context {}) in {:.2} s",
            opened.file.path().display(),
            session.model().config().layers,
            model::describe(session.model().backend()),
            session.model().context_size(),
            load.as_secs_f64()
        );
    }
    let batch = prompts.len() > 1;
    for prompt in &prompts {
        let text = match &template {
            Some(t) => {
                let mut messages = Vec::new();
                if let Some(system) = &args.system {
                    messages.push(Message::new(Role::System, system.clone()));
                }
                messages.push(Message::new(Role::User, prompt.clone()));
                t.render(&messages, true)?
            }
            None => prompt.clone(),
        };
        // Each prompt starts afresh.
        session.reset();
        if batch && !args.quiet && !args.json {
            eprintln!("=== Prompt: {prompt} ===");
        }
        let (outcome, timings) = generate_one(&mut session, &text, &params, &args, load_ms)?;
        load_ms = 0.0;
        if args.json {
            let result = RunResult {
                model: &args.model,
                prompt,
                text: &outcome.text,
                prompt_tokens: outcome.prompt_tokens,
                generated_tokens: outcome.tokens.len(),
                token_ids: &outcome.tokens,
                stop_reason: outcome.stop,
                seed: params.sampler.seed,
                timings,
            };
            let mut out = io::stdout().lock();
            serde_json::to_writer(&mut out, &result)?;
            writeln!(out)?;
            out.flush()?;
        } else if !args.quiet {
            eprintln!(
                "apr: {} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s, first token after {:.0} ms, stop: {}",
                outcome.prompt_tokens,
                timings.prompt_tokens_per_s,
                outcome.tokens.len(),
                timings.decode_tokens_per_s,
                timings.ttft_ms,
                serde_json::to_value(outcome.stop)?
                    .as_str()
                    .unwrap_or_default()
            );
        }
        if CANCELLED.load(Ordering::SeqCst) {
            return Err(apr_core::Error::Cancelled.into());
        }
    }
    Ok(())
}

/// Generates for one prompt text, streaming to stdout unless `--json`.
fn generate_one(
    session: &mut Session<'_, Engine>,
    text: &str,
    params: &GenerateParams,
    args: &RunArgs,
    load_ms: f64,
) -> Result<(Outcome, Timings)> {
    let ids = session.tokenizer().encode(text, !args.no_special)?;
    if ids.is_empty() {
        bail!("the prompt is empty: nothing to continue");
    }
    let start = Instant::now();
    let (outcome, first) =
        model::generate_to_stdout(session, &ids, params, !args.json, &CANCELLED)?;
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let prompt_ms = (first - start).as_secs_f64() * 1e3;
    let decode_ms = (end - first).as_secs_f64() * 1e3;
    let evaluated = outcome.prompt_tokens - outcome.cached_tokens;
    let timings = Timings::new(
        load_ms,
        prompt_ms,
        decode_ms,
        evaluated,
        outcome.tokens.len(),
    );
    Ok((outcome, timings))
}

/// The prompts: `-p`, else the lines of `--prompts-file`, else the lines of stdin (blank lines
/// skipped).
fn prompts(args: &RunArgs) -> Result<Vec<String>> {
    if let Some(p) = &args.prompt {
        return Ok(vec![p.clone()]);
    }
    let lines: Vec<String> = if let Some(path) = &args.prompts_file {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        let stdin = io::stdin();
        if stdin.is_terminal() {
            bail!("no prompt: pass -p PROMPT, --prompts-file FILE, or prompts on stdin");
        }
        stdin
            .lock()
            .lines()
            .collect::<io::Result<_>>()
            .context("cannot read prompts from stdin")?
    };
    let prompts: Vec<String> = lines.into_iter().filter(|l| !l.trim().is_empty()).collect();
    if prompts.is_empty() {
        bail!("no prompts: the input has no non-blank lines");
    }
    Ok(prompts)
}
