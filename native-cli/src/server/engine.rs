//! The engine: one thread that owns the model and generates for every request.
//!
//! Requests arrive through a bounded queue. Up to `parallel` of them are generated at once, each
//! in its own slot (its own KV cache), and they decode together: every round evaluates one token
//! of every running request in a single batch, so all of them share each pass over the weights
//! ([`Session::step_each`]). A new request takes the free slot whose cache shares the longest
//! prefix with its prompt, and evaluates only the rest (its prompt runs on its own, between
//! rounds). Each request streams its tokens back through its own channel; when the client goes
//! away the receiver is dropped, and the request leaves the batch before its next token.

use std::sync::Arc;
use std::time::Instant;

use crate::commands::model::Engine as Backend;
use anyhow::{Context, Result, anyhow};
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
    /// The model's chat template, or why there is none usable.
    pub(crate) template: Result<ChatTemplate, String>,
    pub(crate) info: ModelInfo,
    /// The model's id in the API: its file name.
    pub(crate) id: String,
    /// When the file was last modified, in Unix seconds.
    pub(crate) created: u64,
    /// Positions each slot holds.
    pub(crate) ctx: usize,
    /// Where the model runs (`model::describe`).
    pub(crate) backend: String,
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
        let qwen = model::load(&parsed, &config.device, config.ctx_size, config.kv_type)?;
        let mut session = Session::new(qwen, tokenizer.clone());
        let store = (0..config.parallel)
            .map(|_| session.new_slot())
            .collect::<apr_core::Result<Vec<_>>>()
            .context("cannot allocate the slots' KV caches")?;
        let path = opened.file.path();
        let loaded = Loaded {
            tokenizer,
            template: ChatTemplate::from_metadata(&parsed.metadata).map_err(|e| e.to_string()),
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
            backend: model::describe(session.model().backend()),
        };
        let engine = Engine {
            session,
            store,
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

struct Engine<'m> {
    session: Session<'m, Backend>,
    /// Every slot's cache. The session's own cache only stands in while a slot's prompt is
    /// evaluated in it.
    store: Vec<Slot<Backend>>,
    busy: Vec<bool>,
    metrics: &'m Metrics,
}

impl Engine<'_> {
    fn serve(&mut self, mut jobs: mpsc::Receiver<Job>) {
        let mut running: Vec<Running> = Vec::new();
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
                    running.push(r);
                }
                self.metrics.set_busy_slots(running.len());
            }
            running = self.round(running);
        }
    }

    /// One token for every running request, evaluated together; returns those still running.
    fn round(&mut self, running: Vec<Running>) -> Vec<Running> {
        let (mut running, gone): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|r| !r.events.is_closed());
        for r in gone {
            self.metrics.cancelled();
            self.busy[r.slot] = false;
        }
        let mut slots: Vec<Option<&mut Slot<Backend>>> = self.store.iter_mut().map(Some).collect();
        let mut batch: Vec<_> = running
            .iter_mut()
            .filter_map(|r| Some((slots.get_mut(r.slot)?.take()?, &mut r.generation)))
            .collect();
        let stepped = self.session.step_each(&mut batch);
        drop(batch);
        let tokens = match stepped {
            Ok(tokens) => tokens,
            Err(e) => {
                self.metrics.set_busy_slots(0);
                for r in running {
                    self.busy[r.slot] = false;
                    let _ = r.events.send(Event::Failed(format!("{e:#}")));
                }
                return Vec::new();
            }
        };
        let mut still = Vec::with_capacity(running.len());
        let mut done = Vec::new();
        for (mut r, token) in running.into_iter().zip(tokens) {
            match token {
                Some(token) => {
                    r.first.get_or_insert_with(Instant::now);
                    if r.events.send(Event::Token(token)).is_ok() {
                        still.push(r);
                    } else {
                        self.metrics.cancelled();
                        self.busy[r.slot] = false;
                    }
                }
                None => {
                    self.busy[r.slot] = false;
                    done.push(r);
                }
            }
        }
        // The gauge drops before the replies go out: a client that has its answer never sees
        // its slot still busy.
        self.metrics.set_busy_slots(still.len());
        for r in done {
            self.finish(r);
        }
        still
    }

    /// The free slot whose cache shares the longest prefix with `prompt`.
    fn pick_slot(&self, prompt: &[u32]) -> Option<usize> {
        let shared = |slot: &Slot<Backend>| {
            slot.tokens()
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        (0..self.busy.len())
            .filter(|&s| !self.busy[s])
            .max_by_key(|&s| shared(&self.store[s]))
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
                let cache = &mut self.store[slot];
                self.session.swap_slot(cache)?;
                let g = self.session.start(&job.prompt, &job.params);
                // The slot takes its cache back whether or not the prompt went through.
                self.session.swap_slot(cache)?;
                Ok((slot, g?))
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
