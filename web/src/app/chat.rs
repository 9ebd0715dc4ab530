//! The chat view: the loader, sampling settings, the conversation with streaming answers, Stop,
//! and a live readout of speed with a sparkline.

use leptos::prelude::*;

use super::loader::Loader;
use super::{Errors, Ui};
use crate::protocol::{ChatParams, Request, Role, Task};
use crate::state::{Segment, rates, segments, sparkline, stats_line, trim_number};

/// The chat view.
#[component]
pub fn ChatView() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let params = RwSignal::new(ChatParams::default());
    let draft = RwSignal::new(String::new());
    let system = RwSignal::new(String::new());
    let send = move || {
        if ui.model.get_untracked().is_none() {
            ui.error(Task::Chat, "load a model first");
            return;
        }
        let id = ui.id();
        let text = draft.get_untracked();
        let mut messages = None;
        ui.chat.update(|c| {
            c.system = system.get_untracked();
            messages = c.ask(&text, id).ok();
        });
        let Some(messages) = messages else { return };
        ui.clear_errors(&[Task::Chat]);
        ui.stopped.set(false);
        let request = Request::Chat {
            id,
            messages,
            params: params.get_untracked(),
        };
        if ui.send(Task::Chat, &request, None) {
            draft.set(String::new());
        } else {
            ui.chat.update(|c| c.fail(id));
        }
    };
    let busy = move || ui.chat.with(|c| c.busy());
    view! {
        <div class="chat-layout">
            <aside class="side">
                <Loader />
                <Settings params=params system=system />
            </aside>
            <section class="card conversation" aria-label="Conversation">
                <Transcript />
                <Readout />
                <Errors tasks=&[Task::Chat] />
                <form
                    class="composer"
                    on:submit=move |ev| {
                        ev.prevent_default();
                        send();
                    }
                >
                    <textarea
                        data-testid="prompt"
                        aria-label="Your message"
                        placeholder=move || {
                            if ui.model.get().is_some() {
                                "Ask something… (Enter sends, Shift+Enter for a new line)"
                            } else {
                                "Load a model to start"
                            }
                        }
                        rows="3"
                        prop:value=move || draft.get()
                        on:input=move |ev| draft.set(event_target_value(&ev))
                        on:keydown=move |ev: web_sys::KeyboardEvent| {
                            if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                                ev.prevent_default();
                                if !busy() {
                                    send();
                                }
                            }
                        }
                    ></textarea>
                    <div class="composer-actions">
                        <button
                            class="secondary"
                            type="button"
                            disabled=move || busy() || ui.chat.with(|c| c.turns.is_empty())
                            on:click=move |_| {
                                ui.chat.update(|c| c.clear());
                                ui.stats.set(None);
                            }
                        >
                            "New chat"
                        </button>
                        <Show
                            when=busy
                            fallback=move || {
                                view! {
                                    <button
                                        class="primary"
                                        type="submit"
                                        data-testid="send"
                                        disabled=move || ui.model.get().is_none()
                                    >
                                        "Send"
                                    </button>
                                }
                            }
                        >
                            <button
                                class="danger"
                                type="button"
                                data-testid="stop"
                                on:click=move |_| {
                                    ui.send(Task::Chat, &Request::Stop, None);
                                }
                            >
                                "Stop"
                            </button>
                        </Show>
                    </div>
                </form>
            </section>
        </div>
    }
}

/// Sampling settings and the system prompt.
#[component]
fn Settings(params: RwSignal<ChatParams>, system: RwSignal<String>) -> impl IntoView {
    let number = move |label: &'static str,
                       id: &'static str,
                       step: &'static str,
                       get: fn(&ChatParams) -> f64,
                       set: fn(&mut ChatParams, f64)| {
        view! {
            <label class="field" for=id>
                <span>{label}</span>
                <input
                    id=id
                    data-testid=id
                    type="number"
                    step=step
                    prop:value=move || params.with(|p| trim_number(get(p)))
                    on:change=move |ev| {
                        if let Ok(v) = event_target_value(&ev).trim().parse::<f64>()
                            && v.is_finite()
                        {
                            params.update(|p| set(p, v));
                        }
                    }
                />
            </label>
        }
    };
    view! {
        <section class="card settings" aria-label="Settings">
            <h2>"Settings"</h2>
            <label class="field wide" for="system">
                <span>"System prompt"</span>
                <textarea
                    id="system"
                    rows="2"
                    placeholder="The template's default"
                    prop:value=move || system.get()
                    on:input=move |ev| system.set(event_target_value(&ev))
                ></textarea>
            </label>
            <div class="grid">
                {number("Temperature", "temperature", "0.05", |p| f64::from(p.temperature), |p, v| p.temperature = v.clamp(0.0, 5.0) as f32)}
                {number("Top-p", "top-p", "0.05", |p| f64::from(p.top_p), |p, v| p.top_p = v.clamp(0.01, 1.0) as f32)}
                {number("Top-k", "top-k", "1", |p| f64::from(p.top_k), |p, v| p.top_k = v.clamp(0.0, 1e6) as u32)}
                {number("Max tokens", "max-tokens", "1", |p| f64::from(p.max_tokens), |p, v| p.max_tokens = v.clamp(1.0, 1e6) as u32)}
                {number("Seed", "seed", "1", |p| p.seed as f64, |p, v| p.seed = v.max(0.0) as u64)}
            </div>
            <label class="check small">
                <input
                    type="checkbox"
                    data-testid="raw"
                    prop:checked=move || params.with(|p| p.raw)
                    on:change=move |ev| params.update(|p| p.raw = event_target_checked(&ev))
                />
                " Plain completion: continue the text, without the chat template"
            </label>
            <p class="muted small">
                "Temperature 0 is greedy: the same answer as "
                <code>"apr run --chat --temperature 0"</code>
                " (or, for a plain completion, without "
                <code>"--chat"</code>
                ")."
            </p>
        </section>
    }
}

/// The conversation so far and the answer streaming in.
#[component]
fn Transcript() -> impl IntoView {
    let ui = expect_context::<Ui>();
    view! {
        <div class="transcript" data-testid="transcript" aria-live="polite">
            <Show when=move || ui.chat.with(|c| c.turns.is_empty() && c.pending.is_none())>
                <p class="empty muted">"The conversation appears here."</p>
            </Show>
            {move || {
                ui.chat.with(|c| {
                    c.turns
                        .iter()
                        .map(|t| bubble(t.role, t.content.clone(), false))
                        .collect_view()
                })
            }}
            {move || {
                ui.chat.with(|c| c.pending.as_ref().map(|p| bubble(Role::Assistant, p.text.clone(), true)))
            }}
        </div>
    }
}

fn bubble(role: Role, text: String, streaming: bool) -> impl IntoView {
    let (class, who) = match role {
        Role::User => ("msg user", "You"),
        Role::Assistant => ("msg assistant", "Model"),
        Role::System => ("msg system", "System"),
    };
    view! {
        <div class=class data-testid=if streaming { "answer-streaming" } else { "message" } data-role=who>
            <div class="who">{who}{if streaming { " · writing…" } else { "" }}</div>
            <div class="body" data-testid="message-text">
                {segments(&text)
                    .into_iter()
                    .map(|s| match s {
                        Segment::Text(t) => view! { <p class="prose">{t}</p> }.into_any(),
                        Segment::Code { lang, body, .. } => view! { <CodeBlock lang=lang body=body /> }.into_any(),
                    })
                    .collect_view()}
            </div>
        </div>
    }
}

/// A code block with a Copy button.
#[component]
fn CodeBlock(lang: String, body: String) -> impl IntoView {
    let copied = RwSignal::new(None::<bool>);
    let text = body.clone();
    let copy = move |_| {
        let Some(clipboard) = web_sys::window().map(|w| w.navigator().clipboard()) else {
            copied.set(Some(false));
            return;
        };
        let promise = clipboard.write_text(&text);
        wasm_bindgen_futures::spawn_local(async move {
            let ok = wasm_bindgen_futures::JsFuture::from(promise).await.is_ok();
            copied.set(Some(ok));
        });
    };
    view! {
        <div class="code">
            <div class="code-bar">
                <span class="muted small">{if lang.is_empty() { "code".to_string() } else { lang }}</span>
                <button class="link small" on:click=copy aria-label="Copy the code">
                    {move || match copied.get() {
                        None => "Copy",
                        Some(true) => "Copied",
                        Some(false) => "Copy failed",
                    }}
                </button>
            </div>
            <pre><code>{body}</code></pre>
        </div>
    }
}

/// Live speed with a sparkline, then the answer's timings.
#[component]
fn Readout() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let live = move || {
        ui.chat.with(|c| {
            c.pending.as_ref().map(|p| {
                let r = rates(&p.arrivals, 8);
                (p.arrivals.len(), p.arrivals.first().copied(), r)
            })
        })
    };
    view! {
        <div class="readout" data-testid="readout">
            {move || match live() {
                Some((n, first, r)) => {
                    let now = r.last().copied().unwrap_or(0.0);
                    let ttft = first.map_or("prefilling…".to_string(), |t| format!("first token {t:.0} ms"));
                    view! {
                        <span>{format!("{n} tokens · {now:.1} tok/s · {ttft}")}</span>
                        <svg class="spark" viewBox="0 0 160 28" width="160" height="28" role="img" aria-label="tokens per second">
                            <polyline points=sparkline(&r, 160.0, 28.0) />
                        </svg>
                    }
                    .into_any()
                }
                None => match ui.stats.get() {
                    Some(s) => view! {
                        <span data-testid="stats">
                            {stats_line(&s)}
                            {move || if ui.stopped.get() { " · stopped" } else { "" }}
                        </span>
                    }
                    .into_any(),
                    None => view! { <span class="muted">"Speed shows here while the model answers."</span> }.into_any(),
                },
            }}
        </div>
    }
}
