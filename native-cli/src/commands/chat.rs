//! `apr chat MODEL`: a multi-turn conversation through the model's chat template. The KV cache
//! keeps the conversation, so each turn evaluates only its new tokens.

use std::io::{self, BufRead, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use apr_core::chat_template::{ChatTemplate, Message, Role};
use apr_core::generate::{GenerateParams, StopReason};

use super::model;
use crate::args::ChatArgs;

/// Set by Ctrl-C; the current answer stops and the session goes on.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) fn run(args: ChatArgs) -> Result<()> {
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    let opened = model::open(&args.model)?;
    let parsed = opened.parse()?;
    let template = ChatTemplate::from_metadata(&parsed.metadata)?;
    let (mut session, load) = model::session(&parsed, &args.engine, opened.started)?;
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampler: model::sampler(&args.sampling)?,
        ..GenerateParams::default()
    };
    let interactive = io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "apr: {} loaded in {:.2} s. /clear forgets, /system TEXT sets the system prompt, /exit ends; Ctrl-C stops an answer.",
            opened.file.path().display(),
            load.as_secs_f64()
        );
    }
    let mut system = args.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let mut stdin = io::stdin().lock();
    let mut line = String::new();
    loop {
        if interactive {
            eprint!("> ");
        }
        line.clear();
        if stdin.read_line(&mut line).context("cannot read stdin")? == 0 {
            break;
        }
        INTERRUPTED.store(false, Ordering::SeqCst);
        let input = line.trim_end_matches(['\n', '\r']);
        if input.trim().is_empty() {
            continue;
        }
        match input.trim() {
            "/exit" | "/quit" => break,
            "/clear" => {
                history.clear();
                session.reset();
                eprintln!("apr: conversation cleared");
                continue;
            }
            cmd if cmd.starts_with("/system") => {
                let text = cmd["/system".len()..].trim();
                system = (!text.is_empty()).then(|| text.to_owned());
                history.clear();
                eprintln!(
                    "apr: system prompt {}; conversation cleared",
                    if system.is_some() {
                        "set"
                    } else {
                        "reset to the template's"
                    }
                );
                continue;
            }
            _ => {}
        }
        history.push(Message::new(Role::User, input));
        let mut messages = Vec::with_capacity(history.len() + 1);
        if let Some(s) = &system {
            messages.push(Message::new(Role::System, s.clone()));
        }
        messages.extend(history.iter().cloned());
        let prompt = template.render(&messages, true)?;
        let ids = session.tokenizer().encode(&prompt, true)?;
        let (outcome, _) =
            model::generate_to_stdout(&mut session, &ids, &params, true, &INTERRUPTED)?;
        if outcome.stop == StopReason::Cancelled {
            eprintln!("apr: answer stopped");
        }
        history.push(Message::new(Role::Assistant, outcome.text));
    }
    Ok(())
}
