//! The page: three views (chat, convert, inspect) over one worker. Components only wire the
//! signals of [`Ui`] to the DOM; what the state means lives in [`crate::state`].

mod chat;
mod convert;
mod dropzone;
mod inspect;
mod link;
mod loader;

use leptos::prelude::*;
use web_sys::Blob;

use crate::protocol::{
    CacheEntry, Device, Event, GenStats, ModelSource, Request, StageRow, Task, VerifySummary,
};
use crate::state::Conversation;
pub use link::Link;

/// The default model, served beside the page by `scripts/web.sh`.
pub const DEFAULT_MODEL_URL: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// What the default model is, for the button.
pub const DEFAULT_MODEL_LABEL: &str = "Qwen2.5-Coder-0.5B-Instruct · Q4_K_M · 491 MB";

/// Which view shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Chat with the loaded model.
    Chat,
    /// Convert between formats.
    Convert,
    /// Inspect and check a file.
    Inspect,
}

/// Progress of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The task.
    pub task: Task,
    /// Done.
    pub done: u64,
    /// Total (0 when unknown).
    pub total: u64,
}

/// The loaded model, as the page shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedModel {
    /// File name.
    pub name: String,
    /// One line about it.
    pub summary: String,
    /// Milliseconds to load.
    pub load_ms: f64,
    /// From the cache.
    pub from_cache: bool,
}

/// A finished conversion.
#[derive(Clone, Debug)]
pub struct Converted {
    /// Output name.
    pub name: String,
    /// Its bytes.
    pub bytes: u64,
    /// Seconds.
    pub seconds: f64,
    /// Tensors.
    pub tensors: usize,
    /// Verification, when asked.
    pub verify: Option<VerifySummary>,
    /// The worker's memory afterwards.
    pub memory: u64,
    /// An object URL of the output, for the download link.
    pub url: String,
}

/// An inspect report.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspected {
    /// File name.
    pub name: String,
    /// `apr inspect`'s facts.
    pub info: Option<Box<apr_core::info::ModelInfo>>,
    /// `apr check`'s stages.
    pub stages: Vec<StageRow>,
    /// Every stage passed.
    pub pass: bool,
}

/// Every signal the page has. Copy: each field is a handle.
#[derive(Clone, Copy, Debug)]
pub struct Ui {
    /// The view.
    pub view: RwSignal<View>,
    /// Where the model runs: the worker's CPU backend once it is up, then the loaded model's.
    pub backend: RwSignal<Option<String>>,
    /// Where the next model should run.
    pub device: RwSignal<Device>,
    /// Whether the cache works here.
    pub cache_ok: RwSignal<bool>,
    /// The worker, once started.
    pub link: RwSignal<Option<Link>, LocalStorage>,
    /// Running task progress.
    pub progress: RwSignal<Option<Progress>>,
    /// The loaded model.
    pub model: RwSignal<Option<LoadedModel>>,
    /// A model is loading.
    pub loading: RwSignal<bool>,
    /// The conversation.
    pub chat: RwSignal<Conversation>,
    /// The last answer's timings.
    pub stats: RwSignal<Option<GenStats>>,
    /// The last answer was stopped.
    pub stopped: RwSignal<bool>,
    /// The next request id.
    pub next_id: RwSignal<u32>,
    /// A conversion is running.
    pub converting: RwSignal<bool>,
    /// The last conversion.
    pub converted: RwSignal<Option<Converted>, LocalStorage>,
    /// An inspection is running.
    pub inspecting: RwSignal<bool>,
    /// The last inspection.
    pub inspected: RwSignal<Option<Inspected>>,
    /// Cached models.
    pub cache: RwSignal<Vec<CacheEntry>>,
    /// Errors per view, newest last.
    pub errors: RwSignal<Vec<(Task, String)>>,
}

impl Ui {
    fn new() -> Self {
        Self {
            view: RwSignal::new(View::Chat),
            backend: RwSignal::new(None),
            device: RwSignal::new(Device::default()),
            cache_ok: RwSignal::new(false),
            link: RwSignal::new_local(None),
            progress: RwSignal::new(None),
            model: RwSignal::new(None),
            loading: RwSignal::new(false),
            chat: RwSignal::new(Conversation::default()),
            stats: RwSignal::new(None),
            stopped: RwSignal::new(false),
            next_id: RwSignal::new(1),
            converting: RwSignal::new(false),
            converted: RwSignal::new_local(None),
            inspecting: RwSignal::new(false),
            inspected: RwSignal::new(None),
            cache: RwSignal::new(Vec::new()),
            errors: RwSignal::new(Vec::new()),
        }
    }

    /// Sends a request to the worker; a failure to send shows as an error of `task`.
    pub fn send(&self, task: Task, request: &Request, file: Option<&Blob>) -> bool {
        let sent = self.link.with_untracked(|l| match l {
            Some(link) => link.send(request, file),
            None => Err("the worker has not started".into()),
        });
        match sent {
            Ok(()) => true,
            Err(why) => {
                self.error(task, why);
                false
            }
        }
    }

    /// Shows an error.
    pub fn error(&self, task: Task, message: impl Into<String>) {
        let message = message.into();
        self.errors.update(|e| {
            e.push((task, message));
            // Old errors scroll away.
            if e.len() > 5 {
                e.remove(0);
            }
        });
    }

    /// Clears the errors of the tasks a view owns.
    pub fn clear_errors(&self, tasks: &[Task]) {
        self.errors
            .update(|e| e.retain(|(t, _)| !tasks.contains(t)));
    }

    /// Starts loading a model.
    pub fn load(&self, source: ModelSource, file: Option<&Blob>, context: u32) {
        self.clear_errors(&[Task::Load, Task::Chat, Task::Cache]);
        let device = self.device.get_untracked();
        let request = Request::Load {
            source,
            context,
            device,
        };
        if self.send(Task::Load, &request, file) {
            self.loading.set(true);
            self.model.set(None);
            self.chat.update(Conversation::clear);
            self.stats.set(None);
            self.progress.set(Some(Progress {
                task: Task::Load,
                done: 0,
                total: 0,
            }));
        }
    }

    /// A request id.
    pub fn id(&self) -> u32 {
        let id = self.next_id.get_untracked();
        self.next_id.set(id.wrapping_add(1));
        id
    }

    fn on_event(&self, event: Event, file: Option<Blob>) {
        match event {
            Event::Ready { backend, cache } => {
                self.backend.set(Some(backend));
                self.cache_ok.set(cache);
                if cache {
                    self.send(Task::Cache, &Request::ListCache, None);
                }
            }
            Event::Progress { task, done, total } => {
                self.progress.set(Some(Progress { task, done, total }));
            }
            Event::Loaded {
                model,
                name,
                load_ms,
                from_cache,
                context,
                backend,
            } => {
                self.backend.set(Some(backend));
                let quant = model.quantization.clone().unwrap_or_else(|| {
                    model
                        .dtypes
                        .first()
                        .map(|d| d.dtype.to_string())
                        .unwrap_or_default()
                });
                let summary = format!(
                    "{} · {} layers · {} · {:.0}M parameters · context {context}",
                    model
                        .architecture
                        .as_deref()
                        .unwrap_or("unknown architecture"),
                    model.layers.unwrap_or(0),
                    quant,
                    model.parameters as f64 / 1e6,
                );
                self.model.set(Some(LoadedModel {
                    name,
                    summary,
                    load_ms,
                    from_cache,
                }));
                self.loading.set(false);
                self.progress.set(None);
            }
            Event::Token {
                id, text, at_ms, ..
            } => {
                self.chat.update(|c| c.token(id, &text, at_ms));
            }
            Event::Done { id, reason, stats } => {
                self.chat.update(|c| c.finish(id));
                self.stopped.set(reason == "cancelled");
                self.stats.set(Some(stats));
            }
            Event::Converted {
                name,
                bytes,
                seconds,
                tensors,
                verify,
                memory,
                ..
            } => {
                self.converting.set(false);
                self.progress.set(None);
                let url = file
                    .as_ref()
                    .and_then(|f| web_sys::Url::create_object_url_with_blob(f).ok());
                match url {
                    Some(url) => {
                        self.converted.update(|old| {
                            if let Some(o) = old.take() {
                                let _ = web_sys::Url::revoke_object_url(&o.url);
                            }
                            *old = Some(Converted {
                                name,
                                bytes,
                                seconds,
                                tensors,
                                verify,
                                memory,
                                url,
                            });
                        });
                    }
                    None => self.error(Task::Convert, "the converted file did not reach the page"),
                }
            }
            Event::Inspected {
                name,
                info,
                stages,
                pass,
            } => {
                self.inspecting.set(false);
                self.progress.set(None);
                self.inspected.set(Some(Inspected {
                    name,
                    info,
                    stages,
                    pass,
                }));
            }
            Event::Cache { entries } => self.cache.set(entries),
            Event::Failed { task, message } => {
                match task {
                    Task::Load => {
                        self.loading.set(false);
                        self.progress.set(None);
                    }
                    Task::Chat => {
                        let pending = self
                            .chat
                            .with_untracked(|c| c.pending.as_ref().map(|p| p.id));
                        if let Some(id) = pending {
                            self.chat.update(|c| c.fail(id));
                        }
                    }
                    Task::Convert | Task::Verify => {
                        self.converting.set(false);
                        self.progress.set(None);
                    }
                    Task::Inspect => {
                        self.inspecting.set(false);
                        self.progress.set(None);
                    }
                    Task::Cache => {}
                }
                self.error(task, message);
            }
        }
    }
}

/// Mounts the page on `<body>`.
pub fn mount() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

/// The page.
#[component]
fn App() -> impl IntoView {
    let ui = Ui::new();
    provide_context(ui);
    match Link::start(move |event, file| ui.on_event(event, file)) {
        Ok(link) => ui.link.set(Some(link)),
        Err(why) => ui.error(Task::Load, why),
    }
    let tab = move |view: View, label: &'static str| {
        view! {
            <button
                role="tab"
                class="tab"
                aria-selected=move || (ui.view.get() == view).to_string()
                on:click=move |_| ui.view.set(view)
            >
                {label}
            </button>
        }
    };
    view! {
        <header class="top">
            <div class="brand">
                <span class="logo" aria-hidden="true">"◆"</span>
                <span class="name">"apr"</span>
                <span class="tagline">"models in your browser · nothing leaves this page"</span>
            </div>
            <nav class="tabs" role="tablist" aria-label="Views">
                {tab(View::Chat, "Chat")}
                {tab(View::Convert, "Convert")}
                {tab(View::Inspect, "Inspect")}
            </nav>
            <div class="backend" data-testid="backend" title="Where the model runs">
                {move || match ui.backend.get() {
                    Some(b) => b,
                    None => "starting the worker…".to_string(),
                }}
            </div>
        </header>
        <main class="main">
            <Show when=move || ui.view.get() == View::Chat>
                <chat::ChatView />
            </Show>
            <Show when=move || ui.view.get() == View::Convert>
                <convert::ConvertView />
            </Show>
            <Show when=move || ui.view.get() == View::Inspect>
                <inspect::InspectView />
            </Show>
        </main>
        <footer class="foot">
            "apr " {env!("CARGO_PKG_VERSION")}
            " · the same core as the apr command line · files stay on this device"
        </footer>
    }
}

/// The errors of some tasks, as a visible list.
#[component]
pub fn Errors(tasks: &'static [Task]) -> impl IntoView {
    let ui = expect_context::<Ui>();
    let mine = move || {
        ui.errors
            .get()
            .into_iter()
            .filter(|(t, _)| tasks.contains(t))
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
    };
    view! {
        <Show when=move || !mine().is_empty()>
            <div class="errors" role="alert" data-testid="error">
                {move || mine().into_iter().map(|m| view! { <p>{m}</p> }).collect_view()}
                <button class="link" on:click=move |_| ui.clear_errors(tasks)>"Dismiss"</button>
            </div>
        </Show>
    }
}

/// A progress bar for `task`.
#[component]
pub fn ProgressBar(task: Task, label: &'static str) -> impl IntoView {
    let ui = expect_context::<Ui>();
    let current = move || ui.progress.get().filter(|p| p.task == task);
    view! {
        <Show when=move || current().is_some()>
            {move || {
                let p = current().unwrap_or(Progress { task, done: 0, total: 0 });
                let fraction = crate::state::fraction(p.done, p.total);
                let text = match fraction {
                    Some(f) => format!(
                        "{label} {} of {} ({:.0}%)",
                        crate::state::human_bytes(p.done),
                        crate::state::human_bytes(p.total),
                        f * 100.0
                    ),
                    None => format!("{label} {}", crate::state::human_bytes(p.done)),
                };
                view! {
                    <div class="progress" data-testid="progress">
                        <progress
                            max="1"
                            value=fraction.map(|f| f.to_string()).unwrap_or_default()
                            aria-label=label
                        ></progress>
                        <span>{text}</span>
                    </div>
                }
            }}
        </Show>
    }
}
