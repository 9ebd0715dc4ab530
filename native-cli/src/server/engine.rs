//! The engine: one thread that owns the model and generates for every request.
//!
//! Requests arrive through a bounded queue. Up to `parallel` of them are generated at once, each
//! in its own slot (its own KV cache), and they take turns a token at a time: every running
//! request gets one token per round, so a long answer does not hold back a short one. A new
//! request takes the free slot whose cache shares the longest prefix with its prompt, and
//! evaluates only the rest. Each request streams its tokens back through its own channel; when
//! the client goes away the receiver is dropped, and the request stops before its next token.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use apr_core::backend::cpu::Cpu;
use apr_core::chat_template::ChatTemplate;
use apr_core::generate::{GenerateParams, Generation, Outcome, Session, Slot, Timings, Token};
use apr_core::info::ModelInfo;
use apr_core::tokenizer::Tokenizer;
use tokio::sync::{mpsc, oneshot};

use super::config::ServeConfig;
use super::metrics::Metrics;
use crate::commands::model;

/// One generation request.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) prompt: Vec<u32>,
    pub(crate) params: GenerateParams,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) received: Instant,
}

/// What the engine sends back for a request.
#[derive(Debug)]
pub(crate) enum Event {
    /// A generated token and its text.
    Token(Token),
    /// Generation ended.
    Done(Box<Finished>),
    /// Generation failed.
    Failed(String),
}

/// A finished generation.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) outcome: Outcome,
    pub(crate) timings: Timings,
    /// Time spent waiting for a slot.
    pub(crate) queue_ms: f64,
}

/// What the HTTP side needs to know about the loaded model.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) tokenizer: Tokenizer,
    /// `None` when the model carries no chat template.
    pub(crate) template: Option<ChatTemplate>,
    pub(crate) info: ModelInfo,
    /// The model's id in the API: its file name.
    pub(crate) id: String,
    /// When the file was last modified, in Unix seconds.
    pub(crate) created: u64,
    /// Positions each slot holds.
    pub(crate) ctx: usize,
}

/// Starts the engine thread. It loads the model, reports the result through `ready`, then
/// serves `jobs` until every sender is gone.
pub(crate) fn spawn(
    config: &ServeConfig,
    jobs: mpsc::Receiver<Job>,
    metrics: Arc<Metrics>,
    ready: oneshot::Sender<Result<Arc<Loaded>>>,
) -> Result<std::thread::JoinHandle<()>> {
    let config = config.clone();
    std::thread::Builder::new()
        .name("apr-engine".into())
        .spawn(move || run(&config, jobs, &metrics, ready))
        .context("cannot start the engine thread")
}

fn run(
    config: &ServeConfig,
    jobs: mpsc::Receiver<Job>,
    metrics: &Metrics,
    ready: oneshot::Sender<Result<Arc<Loaded>>>,
) {
    let opened = match model::open(&config.model) {
        Ok(o) => o,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let parsed = match opened.parse() {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let built = (|| -> Result<(Engine<'_>, Arc<Loaded>)> {
        let tokenizer = model::tokenizer(&parsed)?;
        let qwen = model::load(&parsed, config.threads, config.ctx_size, config.kv_type)?;
        let mut session = Session::new(qwen, tokenizer.clone());
        // Slot 0 starts in the session; the others wait in `store`.
        let mut store = vec![None];
        for _ in 1..config.parallel {
            store.push(Some(
                session
                    .new_slot()
                    .context("cannot allocate the slots' KV caches")?,
            ));
        }
        let path = opened.file.path();
        let loaded = Loaded {
            tokenizer,
            template: ChatTemplate::from_metadata(&parsed.metadata).ok(),
            info: ModelInfo::from_model(&parsed, false),
            id: path
                .file_name()
                .map_or_else(|| config.model.clone(), |n| n.to_string_lossy().into()),
            created: std::fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
            ctx: config.ctx_size,
        };
        let engine = Engine {
            session,
            store,
            resident: 0,
            busy: vec![false; config.parallel],
            metrics,
        };
        Ok((engine, Arc::new(loaded)))
    })();
    match built {
        Ok((mut engine, loaded)) => {
            if ready.send(Ok(loaded)).is_ok() {
                engine.serve(jobs);
            }
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// A request being generated.
struct Running {
    slot: usize,
    generation: Generation,
    events: mpsc::UnboundedSender<Event>,
    received: Instant,
    started: Instant,
    prompt_ms: f64,
    first: Option<Instant>,
}

/// What becomes of a running request after a step.
enum Next {
    /// It goes on.
    Again,
    /// It has finished: report it.
    Finished,
    /// It failed or its client left.
    Over,
}

struct Engine<'m> {
    session: Session<'m, Cpu>,
    /// Every slot's cache but the resident one's (which is in the session), by slot.
    store: Vec<Option<Slot<Cpu>>>,
    resident: usize,
    busy: Vec<bool>,
    metrics: &'m Metrics,
}

impl Engine<'_> {
    fn serve(&mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut running: VecDeque<Running> = VecDeque::new();
        loop {
            // Fill free slots: wait when idle, otherwise take only what is already queued.
            while running.len() < self.busy.len() {
                let job = if running.is_empty() {
                    match jobs.blocking_recv() {
                        Some(job) => job,
                        None => return,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                if let Some(r) = self.start(job) {
                    running.push_back(r);
                }
                self.metrics.set_busy_slots(running.len());
            }
            // One token for each running request, in turn.
            for _ in 0..running.len() {
                let Some(mut r) = running.pop_front() else {
                    break;
                };
                match self.advance(&mut r) {
                    Next::Again => running.push_back(r),
                    Next::Finished => {
                        self.busy[r.slot] = false;
                        self.finish(r);
                    }
                    Next::Over => self.busy[r.slot] = false,
                }
            }
            self.metrics.set_busy_slots(running.len());
        }
    }

    /// Moves slot `slot`'s cache into the session.
    fn activate(&mut self, slot: usize) -> Result<()> {
        if slot == self.resident {
            return Ok(());
        }
        let mut cache = self
            .store
            .get_mut(slot)
            .and_then(Option::take)
            .ok_or_else(|| anyhow!("slot {slot} has no cache"))?;
        self.session.swap_slot(&mut cache)?;
        self.store[self.resident] = Some(cache);
        self.resident = slot;
        Ok(())
    }

    /// The free slot whose cache shares the longest prefix with `prompt`.
    fn pick_slot(&self, prompt: &[u32]) -> Option<usize> {
        let shared = |slot: usize| {
            let tokens = if slot == self.resident {
                self.session.cached()
            } else {
                self.store[slot].as_ref().map_or(&[][..], Slot::tokens)
            };
            tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        (0..self.busy.len())
            .filter(|&s| !self.busy[s])
            .max_by_key(|&s| (shared(s), s == self.resident))
    }

    /// Evaluates a request's prompt in a free slot.
    fn start(&mut self, job: Job) -> Option<Running> {
        if job.events.is_closed() {
            self.metrics.cancelled();
            return None;
        }
        let started = Instant::now();
        let generation = self
            .pick_slot(&job.prompt)
            .ok_or_else(|| anyhow!("no free slot"))
            .and_then(|slot| {
                self.activate(slot)?;
                let g = self.session.start(&job.prompt, &job.params)?;
                Ok((slot, g))
            });
        match generation {
            Ok((slot, generation)) => {
                self.busy[slot] = true;
                Some(Running {
                    slot,
                    generation,
                    events: job.events,
                    received: job.received,
                    started,
                    prompt_ms: started.elapsed().as_secs_f64() * 1e3,
                    first: None,
                })
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(format!("{e:#}")));
                None
            }
        }
    }

    /// Generates one token of `r`.
    fn advance(&mut self, r: &mut Running) -> Next {
        if r.events.is_closed() {
            self.metrics.cancelled();
            return Next::Over;
        }
        let step = self
            .activate(r.slot)
            .and_then(|()| Ok(self.session.step(&mut r.generation)?));
        match step {
            Ok(Some(token)) => {
                r.first.get_or_insert_with(Instant::now);
                if r.events.send(Event::Token(token)).is_err() {
                    self.metrics.cancelled();
                    return Next::Over;
                }
                Next::Again
            }
            Ok(None) => Next::Finished,
            Err(e) => {
                let _ = r.events.send(Event::Failed(format!("{e:#}")));
                Next::Over
            }
        }
    }

    /// Reports a finished generation.
    fn finish(&self, r: Running) {
        let outcome = r.generation.into_outcome();
        let now = Instant::now();
        let ms = |from: Instant, to: Instant| to.duration_since(from).as_secs_f64() * 1e3;
        let first = r.first.unwrap_or(now);
        let mut timings = Timings::new(
            0.0,
            r.prompt_ms,
            ms(first, now),
            outcome.prompt_tokens - outcome.cached_tokens,
            outcome.tokens.len(),
        );
        timings.ttft_ms = ms(r.received, first);
        self.metrics.generation(
            outcome.prompt_tokens,
            outcome.tokens.len(),
            ms(r.received, now) / 1e3,
            r.first.map(|f| ms(r.received, f) / 1e3),
        );
        let _ = r.events.send(Event::Done(Box::new(Finished {
            outcome,
            timings,
            queue_ms: ms(r.received, r.started),
        })));
    }
}
