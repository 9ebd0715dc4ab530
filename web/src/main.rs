//! The apr web app. Today it is the shell of the page: the chat and convert views arrive with the
//! web issue, and will talk to a Web Worker that owns the model through `apr-core`.

use leptos::prelude::*;

fn main() {
    leptos::mount::mount_to_body(App);
}

/// The page.
#[component]
fn App() -> impl IntoView {
    view! {
        <main class="shell">
            <h1>"apr"</h1>
            <p>
                "Run Qwen2.5-Coder in your browser: no server, no upload. "
                "Chat and format conversion are on their way; today use the "
                <code>"apr"</code>
                " command line."
            </p>
            <p class="version">"apr-core " {env!("CARGO_PKG_VERSION")}</p>
        </main>
    }
}
