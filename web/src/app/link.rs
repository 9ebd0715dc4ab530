//! The page's end of the worker: starts it, sends [`Request`]s and hands every [`Event`] to one
//! callback.

use wasm_bindgen::prelude::*;
use web_sys::{Blob, MessageEvent, Worker};

use crate::envelope;
use crate::protocol::{Event, Request, Task};

/// The worker's loader script (trunk's shim), relative to the page so any static host works.
const WORKER_SCRIPT: &str = "./apr-worker_loader.js";

/// A running worker.
#[derive(Clone, Debug)]
pub struct Link {
    worker: Worker,
}

impl Link {
    /// Starts the worker; `on_event` gets everything it says, and its failures as
    /// [`Event::Failed`].
    pub fn start(on_event: impl Fn(Event, Option<Blob>) + 'static) -> Result<Self, String> {
        let worker = Worker::new(WORKER_SCRIPT)
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
