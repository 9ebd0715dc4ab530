//! A place to drop a file, or to pick one with the keyboard or a click.

use leptos::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{DragEvent, File, HtmlInputElement};

/// Calls `on_file` with a dropped or picked file.
#[component]
pub fn DropZone(
    /// What to drop, for people.
    label: &'static str,
    /// File types the picker offers.
    accept: &'static str,
    /// The test hook and DOM id prefix.
    id: &'static str,
    /// Gets the file.
    on_file: Callback<File>,
    /// Greyed out while true.
    #[prop(into)]
    disabled: Signal<bool>,
) -> impl IntoView {
    let over = RwSignal::new(false);
    let input = NodeRef::<leptos::html::Input>::new();
    let take = move |file: Option<File>| {
        if let Some(f) = file
            && !disabled.get_untracked()
        {
            on_file.run(f);
        }
    };
    let on_drop = move |ev: DragEvent| {
        ev.prevent_default();
        over.set(false);
        take(
            ev.data_transfer()
                .and_then(|d| d.files())
                .and_then(|f| f.get(0)),
        );
    };
    let on_change = move |ev: leptos::ev::Event| {
        let picked = ev
            .target()
            .and_then(|t| t.dyn_into::<HtmlInputElement>().ok());
        if let Some(el) = picked {
            take(el.files().and_then(|f| f.get(0)));
            // Picking the same file again must fire again.
            el.set_value("");
        }
    };
    view! {
        <div
            class="dropzone"
            class:over=move || over.get()
            class:disabled=move || disabled.get()
            data-testid=id
            on:dragover=move |ev: DragEvent| {
                ev.prevent_default();
                over.set(true);
            }
            on:dragleave=move |_| over.set(false)
            on:drop=on_drop
        >
            <p class="drop-label">{label}</p>
            <button
                class="secondary"
                disabled=move || disabled.get()
                on:click=move |_| {
                    if let Some(el) = input.get() {
                        el.click();
                    }
                }
            >
                "Choose a file…"
            </button>
            <input
                node_ref=input
                type="file"
                class="hidden"
                accept=accept
                id=format!("{id}-input")
                data-testid=format!("{id}-input")
                on:change=on_change
            />
        </div>
    }
}
