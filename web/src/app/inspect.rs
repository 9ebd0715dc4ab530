//! The inspect view: `apr inspect`'s facts and `apr check`'s ten stages for a dropped file.

use leptos::prelude::*;
use web_sys::File;

use super::dropzone::DropZone;
use super::{Errors, ProgressBar, Ui};
use crate::protocol::{Request, Task};
use crate::state::human_bytes;

/// The inspect view.
#[component]
pub fn InspectView() -> impl IntoView {
    let ui = expect_context::<Ui>();
    let busy = Signal::derive(move || ui.inspecting.get() || ui.backend.get().is_none());
    let on_file = Callback::new(move |f: File| {
        ui.clear_errors(&[Task::Inspect]);
        if ui.send(
            Task::Inspect,
            &Request::Inspect { name: f.name() },
            Some(&f),
        ) {
            ui.inspecting.set(true);
            ui.inspected.set(None);
        }
    });
    view! {
        <section class="card inspect" aria-label="Inspect">
            <h2>"Inspect and check a model file"</h2>
            <DropZone
                label="Drop a model file to see what it holds and whether it is sound"
                accept=".gguf,.safetensors,.apr"
                id="inspect-drop"
                on_file=on_file
                disabled=busy
            />
            <ProgressBar task=Task::Inspect label="reading" />
            <Errors tasks=&[Task::Inspect] />
            {move || ui.inspected.get().map(|r| {
                let facts: Vec<(&str, String)> = match &r.info {
                    Some(i) => {
                        let opt = |v: Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
                        vec![
                            ("Format", format!("{} v{}{}", i.format, i.format_version, i.compression.as_ref().map(|c| format!(" · {c}")).unwrap_or_default())),
                            ("File size", human_bytes(i.file_size)),
                            ("Name", i.name.clone().unwrap_or_else(|| "—".into())),
                            ("Architecture", i.architecture.clone().unwrap_or_else(|| "—".into())),
                            ("Quantization", i.quantization.clone().unwrap_or_else(|| "—".into())),
                            ("Parameters", format!("{:.1} M", i.parameters as f64 / 1e6)),
                            ("LM head", if i.lm_head.tied { format!("tied to {}", i.lm_head.tensor) } else { i.lm_head.tensor.clone() }),
                            ("Vocabulary", opt(i.vocab_size)),
                            ("Layers", opt(i.layers)),
                            ("Hidden size", opt(i.hidden_size)),
                            ("Feed-forward size", opt(i.feed_forward_size)),
                            ("Attention heads", format!("{} (KV {})", opt(i.attention_heads), opt(i.kv_heads))),
                            ("Context length", opt(i.context_length)),
                            ("RoPE θ", i.rope_theta.map_or("—".into(), |v| v.to_string())),
                            ("RMSNorm ε", i.rms_norm_eps.map_or("—".into(), |v| v.to_string())),
                            ("Tensors", i.tensor_count.to_string()),
                            ("Types", i.dtypes.iter().map(|d| format!("{} ×{}", d.dtype, d.count)).collect::<Vec<_>>().join(", ")),
                            ("Metadata entries", i.metadata_count.to_string()),
                        ]
                    }
                    None => vec![("Format", "not a model file apr can read".to_string())],
                };
                view! {
                    <div class="report" data-testid="inspected">
                        <h3>{r.name.clone()}</h3>
                        <table class="facts">
                            <tbody>
                                {facts.into_iter().map(|(k, v)| view! { <tr><th scope="row">{k}</th><td>{v}</td></tr> }).collect_view()}
                            </tbody>
                        </table>
                        <h3>
                            "Check: "
                            <span class=if r.pass { "pass" } else { "fail" } data-testid="check-verdict">
                                {if r.pass { "PASS" } else { "FAIL" }}
                            </span>
                        </h3>
                        <table class="stages">
                            <thead><tr><th>"#"</th><th>"Stage"</th><th>"Result"</th><th>"Detail"</th></tr></thead>
                            <tbody>
                                {r.stages.iter().map(|s| view! {
                                    <tr class=s.status.clone()>
                                        <td>{s.number}</td>
                                        <td>{s.name.clone()}</td>
                                        <td class="status">{s.status.to_uppercase()}</td>
                                        <td>{s.detail.clone()}</td>
                                    </tr>
                                }).collect_view()}
                            </tbody>
                        </table>
                    </div>
                }
            })}
        </section>
    }
}
