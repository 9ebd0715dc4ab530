//! Loading a model: drop or pick a file, give a URL, take the bundled default, or reopen a
//! cached one; the cache can be seen and cleared here.

use leptos::prelude::*;
use web_sys::File;

use super::dropzone::DropZone;
use super::{DEFAULT_MODEL_LABEL, DEFAULT_MODEL_URL, Errors, ProgressBar, Ui};
use crate::protocol::{Device, ModelSource, Request, Task};
use crate::state::{cache_key_for_url, human_bytes};

/// Context sizes offered.
const CONTEXTS: [u32; 4] = [1024, 2048, 4096, 8192];

/// The loader panel.
#[component]
pub fn Loader() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let context = RwSignal::new(2048u32);
    let url = RwSignal::new(String::new());
    let busy = Signal::derive(move || ui.loading.get() || ui.backend.get().is_none());
    let on_file = Callback::new(move |file: File| {
        let source = ModelSource::File {
            name: file.name(),
            size: file.size() as u64,
        };
        ui.load(source, Some(&file), context.get_untracked());
    });
    let absolute = |u: &str| -> String {
        web_sys::window()
            .and_then(|w| w.document())
            .and_then(|d| d.base_uri().ok().flatten())
            .and_then(|base| web_sys::Url::new_with_base(u, &base).ok())
            .map_or_else(|| u.to_string(), |u| u.href())
    };
    let load_url = move |u: String| {
        let u = u.trim().to_string();
        if u.is_empty() {
            ui.error(Task::Load, "type a model URL first");
            return;
        }
        ui.load(
            ModelSource::Url { url: absolute(&u) },
            None,
            context.get_untracked(),
        );
    };
    let default_cached = move || {
        let key = cache_key_for_url(&absolute(DEFAULT_MODEL_URL));
        ui.cache.get().iter().any(|e| e.key == key)
    };
    view! {
        <section class="card loader" aria-label="Load a model">
            <h2>"Model"</h2>
            {move || match ui.model.get() {
                Some(m) => view! {
                    <p class="loaded" data-testid="model-loaded">
                        <strong>{m.name.clone()}</strong>
                        <span class="muted">
                            {format!(
                                " · {} · ready in {:.1} s{}",
                                m.summary,
                                m.load_ms / 1000.0,
                                if m.from_cache { " from the cache" } else { "" }
                            )}
                        </span>
                    </p>
                }.into_any(),
                None => view! {
                    <p class="muted">"No model loaded. GGUF, SafeTensors and APR files work."</p>
                }.into_any(),
            }}
            <div class="load-row">
                <button
                    class="primary"
                    data-testid="load-default"
                    disabled=move || busy.get()
                    on:click=move |_| load_url(DEFAULT_MODEL_URL.to_string())
                >
                    "Load the default model"
                </button>
                <span class="muted small">
                    {DEFAULT_MODEL_LABEL}
                    {move || if default_cached() { " · cached" } else { "" }}
                </span>
            </div>
            <DropZone
                label="Drop a .gguf, .safetensors or .apr file here"
                accept=".gguf,.safetensors,.apr"
                id="model-drop"
                on_file=on_file
                disabled=busy
            />
            <form
                class="url-row"
                on:submit=move |ev| {
                    ev.prevent_default();
                    load_url(url.get_untracked());
                }
            >
                <label for="model-url" class="small">"or a URL"</label>
                <input
                    id="model-url"
                    type="url"
                    placeholder="https://huggingface.co/…/resolve/main/model.gguf"
                    prop:value=move || url.get()
                    on:input=move |ev| url.set(event_target_value(&ev))
                />
                <button class="secondary" type="submit" disabled=move || busy.get()>
                    "Load"
                </button>
            </form>
            <div class="settings-row">
                <label for="ctx" class="small">"Context"</label>
                <select
                    id="ctx"
                    on:change=move |ev| {
                        if let Ok(n) = event_target_value(&ev).parse() {
                            context.set(n);
                        }
                    }
                >
                    {CONTEXTS
                        .iter()
                        .map(|&c| {
                            view! {
                                <option value=c.to_string() selected=move || context.get() == c>
                                    {format!("{c} tokens")}
                                </option>
                            }
                        })
                        .collect_view()}
                </select>
                <label for="device" class="small">"Run on"</label>
                <select
                    id="device"
                    data-testid="device"
                    title="WebGPU is the browser's GPU; without it the model runs on the CPU"
                    on:change=move |ev| {
                        let key = event_target_value(&ev);
                        if let Some(d) = Device::ALL.into_iter().find(|d| d.key() == key) {
                            ui.device.set(d);
                        }
                    }
                >
                    {Device::ALL
                        .into_iter()
                        .map(|d| {
                            view! {
                                <option value=d.key() selected=move || ui.device.get() == d>
                                    {d.label()}
                                </option>
                            }
                        })
                        .collect_view()}
                </select>
            </div>
            <ProgressBar task=Task::Load label="loading" />
            <Errors tasks=&[Task::Load, Task::Cache] />
            <CacheList context=context />
        </section>
    }
}

/// The cached models, each with Load and Delete, and Clear all.
#[component]
fn CacheList(context: RwSignal<u32>) -> impl IntoView {
    let ui = expect_context::<Ui>();
    let total = move || ui.cache.get().iter().map(|e| e.bytes).sum::<u64>();
    view! {
        <details class="cache" data-testid="cache">
            <summary>
                {move || {
                    if !ui.cache_ok.get() {
                        "Cache: not available in this browser".to_string()
                    } else {
                        format!(
                            "Cache: {} model(s), {}",
                            ui.cache.get().len(),
                            human_bytes(total())
                        )
                    }
                }}
            </summary>
            <ul>
                {move || {
                    ui.cache
                        .get()
                        .into_iter()
                        .map(|e| {
                            let load_key = e.key.clone();
                            let delete_key = e.key.clone();
                            view! {
                                <li>
                                    <span class="mono">{e.name.clone()}</span>
                                    <span class="muted small">
                                        {format!(" {} · {}", human_bytes(e.bytes), e.origin)}
                                    </span>
                                    <button
                                        class="link"
                                        disabled=move || ui.loading.get()
                                        on:click=move |_| {
                                            ui.load(
                                                ModelSource::Cache { key: load_key.clone() },
                                                None,
                                                context.get_untracked(),
                                            );
                                        }
                                    >
                                        "Load"
                                    </button>
                                    <button
                                        class="link danger"
                                        on:click=move |_| {
                                            ui.send(
                                                Task::Cache,
                                                &Request::ClearCache { key: Some(delete_key.clone()) },
                                                None,
                                            );
                                        }
                                    >
                                        "Delete"
                                    </button>
                                </li>
                            }
                        })
                        .collect_view()
                }}
            </ul>
            <button
                class="secondary"
                data-testid="cache-clear"
                disabled=move || ui.cache.get().is_empty()
                on:click=move |_| {
                    ui.send(Task::Cache, &Request::ClearCache { key: None }, None);
                }
            >
                "Clear the cache"
            </button>
        </details>
    }
}
