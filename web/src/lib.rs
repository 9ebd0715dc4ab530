//! The apr web app: a Leptos page (`app`, built for wasm32 with the default `page` feature) and a
//! Web Worker (`worker`, built for wasm32) that owns the model and does every heavy job (loading,
//! generating, converting, checking) so the page never blocks.
//! They talk only through the serde enums of [`protocol`]; the page's state lives in the plain
//! structs of [`state`].

pub mod protocol;
pub mod state;

#[cfg(all(target_arch = "wasm32", feature = "page"))]
pub mod app;
#[cfg(target_arch = "wasm32")]
pub mod envelope;
#[cfg(target_arch = "wasm32")]
pub mod worker;
