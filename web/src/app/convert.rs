//! The converter view: drop a file, pick the target and options, and download the result. The
//! worker runs the same core conversion as `apr rosetta convert`, so the bytes are the CLI's.

use leptos::prelude::*;
use web_sys::File;

use super::dropzone::DropZone;
use super::{Errors, ProgressBar, Ui};
use crate::protocol::{CompressionChoice, ConvertOptions, Request, TargetFormat, Task};
use crate::state::human_bytes;

/// The converter view.
#[component]
pub fn ConvertView() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let target = RwSignal::new(TargetFormat::Apr);
    let compression = RwSignal::new(CompressionChoice::None);
    let optimize = RwSignal::new(false);
    let quantize = RwSignal::new(String::new());
    let dtype = RwSignal::new(String::new());
    let verify = RwSignal::new(false);
    let file = RwSignal::new_local(None::<File>);
    let busy = Signal::derive(move || ui.converting.get() || ui.backend.get().is_none());
    let start = move || {
        let Some(f) = file.get_untracked() else {
            ui.error(Task::Convert, "drop or choose a file first");
            return;
        };
        let options = ConvertOptions {
            target: target.get_untracked(),
            compression: compression.get_untracked(),
            optimize_size: optimize.get_untracked(),
            quantize: Some(quantize.get_untracked()).filter(|q| !q.is_empty()),
            dtype: Some(dtype.get_untracked()).filter(|d| !d.is_empty()),
            verify: verify.get_untracked(),
        };
        ui.clear_errors(&[Task::Convert, Task::Verify]);
        let request = Request::Convert {
            id: ui.id(),
            name: f.name(),
            options,
        };
        if ui.send(Task::Convert, &request, Some(&f)) {
            ui.converting.set(true);
            ui.converted.set(None);
        }
    };
    let select = move |id: &'static str,
                       label: &'static str,
                       options: Vec<(&'static str, &'static str)>,
                       on: Callback<String>,
                       current: Signal<String>| {
        view! {
            <label class="field" for=id>
                <span>{label}</span>
                <select id=id data-testid=id on:change=move |ev| on.run(event_target_value(&ev))>
                    {options
                        .into_iter()
                        .map(|(value, text)| view! {
                            <option value=value selected=move || current.get() == value>{text}</option>
                        })
                        .collect_view()}
                </select>
            </label>
        }
    };
    view! {
        <section class="card convert" aria-label="Convert">
            <h2>"Convert between GGUF, SafeTensors and APR"</h2>
            <DropZone
                label="Drop the model file to convert"
                accept=".gguf,.safetensors,.apr"
                id="convert-drop"
                on_file=Callback::new(move |f: File| file.set(Some(f)))
                disabled=busy
            />
            <p class="muted" data-testid="convert-file">
                {move || match file.get() {
                    Some(f) => format!("{} · {}", f.name(), human_bytes(f.size() as u64)),
                    None => "No file yet.".to_string(),
                }}
            </p>
            <div class="grid">
                {select(
                    "target",
                    "Target format",
                    vec![("apr", "APR (.apr)"), ("gguf", "GGUF (.gguf)"), ("safetensors", "SafeTensors (.safetensors)")],
                    Callback::new(move |v: String| target.set(match v.as_str() {
                        "gguf" => TargetFormat::Gguf,
                        "safetensors" => TargetFormat::Safetensors,
                        _ => TargetFormat::Apr,
                    })),
                    Signal::derive(move || target.get().extension().to_string()),
                )}
                {select(
                    "compression",
                    "Compression (APR)",
                    vec![("none", "none"), ("lz4", "LZ4"), ("zstd", "Zstd")],
                    Callback::new(move |v: String| compression.set(match v.as_str() {
                        "lz4" => CompressionChoice::Lz4,
                        "zstd" => CompressionChoice::Zstd,
                        _ => CompressionChoice::None,
                    })),
                    Signal::derive(move || match compression.get() {
                        CompressionChoice::None => "none",
                        CompressionChoice::Lz4 => "lz4",
                        CompressionChoice::Zstd => "zstd",
                    }.to_string()),
                )}
                {select(
                    "quantize",
                    "Quantize",
                    vec![("", "keep the types"), ("q8_0", "Q8_0"), ("q6_k", "Q6_K"), ("q5_0", "Q5_0"), ("q4_k", "Q4_K"), ("q4_k_m", "Q4_K_M (mixture)"), ("f16", "F16")],
                    Callback::new(move |v: String| quantize.set(v)),
                    Signal::derive(move || quantize.get()),
                )}
                {select(
                    "dtype",
                    "Float type",
                    vec![("", "as needed"), ("f32", "F32"), ("f16", "F16"), ("bf16", "BF16")],
                    Callback::new(move |v: String| dtype.set(v)),
                    Signal::derive(move || dtype.get()),
                )}
            </div>
            <div class="checks">
                <label>
                    <input type="checkbox" prop:checked=move || optimize.get() on:change=move |ev| optimize.set(event_target_checked(&ev)) />
                    " Smallest Zstd (--optimize-size)"
                </label>
                <label>
                    <input type="checkbox" data-testid="verify" prop:checked=move || verify.get() on:change=move |ev| verify.set(event_target_checked(&ev)) />
                    " Verify every tensor afterwards (--verify)"
                </label>
            </div>
            <button class="primary" data-testid="convert" disabled=move || busy.get() || file.get().is_none() on:click=move |_| start()>
                {move || if ui.converting.get() { "Converting…" } else { "Convert" }}
            </button>
            <ProgressBar task=Task::Convert label="converting" />
            <ProgressBar task=Task::Verify label="verifying" />
            <Errors tasks=&[Task::Convert, Task::Verify] />
            {move || ui.converted.get().map(|c| {
                let verdict = c.verify.as_ref().map(|v| if v.pass {
                    format!(" · verified: {} tensors match", v.tensors)
                } else {
                    format!(" · verification FAILED: {}", v.first_failure.clone().unwrap_or_default())
                }).unwrap_or_default();
                view! {
                    <div class="result" data-testid="converted">
                        <p>{format!("{} · {} · {} tensors in {:.1} s{verdict}", c.name, human_bytes(c.bytes), c.tensors, c.seconds)}</p>
                        <p class="muted" data-testid="converted-memory">
                            {format!("Worker memory afterwards: {} (the input is read a tensor at a time).", human_bytes(c.memory))}
                        </p>
                        <a class="button primary" href=c.url.clone() download=c.name.clone() data-testid="download">
                            {format!("Download {}", c.name)}
                        </a>
                    </div>
                }
            })}
        </section>
    }
}
