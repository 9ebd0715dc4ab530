//! The page's end of the worker: starts it, sends [`Request`]s and hands every [`Event`] to one
//! callback.

use wasm_bindgen::prelude::*;
use web_sys::{Blob, MessageEvent, Worker};

use crate::envelope;
use crate::protocol::{Event, Request, Task};

/// The worker's loader scripts, relative to the page so any static host works: the build with
/// relaxed SIMD's fused multiply-add (much faster), and the plain SIMD128 build for browsers
/// without relaxed SIMD.
const WORKER_RELAXED: &str = "./apr-worker-relaxed_loader.js";
const WORKER_PLAIN: &str = "./apr-worker_loader.js";

/// A module of one function using `f32x4.relaxed_madd`: valid only where relaxed SIMD is.
const RELAXED_PROBE: [u8; 82] = [
    0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 61, 1, 59, 0, 253, 12, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 253, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 253, 133, 2, 11,
];

/// Whether this browser's WebAssembly has relaxed SIMD.
pub fn has_relaxed_simd() -> bool {
    let bytes = js_sys::Uint8Array::from(&RELAXED_PROBE[..]);
    js_sys::WebAssembly::validate(&bytes.into()).unwrap_or(false)
}

/// A running worker.
#[derive(Clone, Debug)]
pub struct Link {
    worker: Worker,
}

impl Link {
    /// Starts the worker; `on_event` gets everything it says, and its failures as
    /// [`Event::Failed`].
    pub fn start(on_event: impl Fn(Event, Option<Blob>) + 'static) -> Result<Self, String> {
        let script = if has_relaxed_simd() {
            WORKER_RELAXED
        } else {
            WORKER_PLAIN
        };
        let worker = Worker::new(script)
            .map_err(|e| format!("cannot start the worker: {}", envelope::describe(&e)))?;
        let on_event = std::rc::Rc::new(on_event);
        let deliver = on_event.clone();
        let on_message = Closure::<dyn Fn(MessageEvent)>::new(move |m: MessageEvent| {
            match envelope::unpack::<Event>(&m.data()) {
                Ok((event, file)) => deliver(event, file),
                Err(why) => deliver(
                    Event::Failed {
                        task: Task::Load,
                        message: format!("the worker said something unreadable: {why}"),
                    },
                    None,
                ),
            }
        });
        let on_error =
            Closure::<dyn Fn(web_sys::ErrorEvent)>::new(move |e: web_sys::ErrorEvent| {
                e.prevent_default();
                on_event(
                    Event::Failed {
                        task: Task::Load,
                        message: format!(
                            "the worker failed: {} (reload the page to start it again)",
                            e.message()
                        ),
                    },
                    None,
                );
            });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        // Both live as long as the page.
        on_message.forget();
        on_error.forget();
        Ok(Self { worker })
    }

    /// Sends `request` with `file` beside it.
    pub fn send(&self, request: &Request, file: Option<&Blob>) -> Result<(), String> {
        let message = envelope::pack(request, file)?;
        self.worker
            .post_message(&message)
            .map_err(|e| format!("cannot reach the worker: {}", envelope::describe(&e)))
    }
}
