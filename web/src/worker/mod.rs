//! The Web Worker: it owns the model and runs every request of [`crate::protocol`] one after
//! another, answering with [`Event`]s. `Stop` is the exception: it is handled the moment it
//! arrives, and the answer being generated ends after its current token.

mod cache;
mod engine;
mod io;
mod tools;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use wasm_bindgen::prelude::*;
use web_sys::{Blob, DedicatedWorkerGlobalScope, MessageEvent};

use crate::envelope;
use crate::protocol::{Event, Request, Task};

thread_local! {
    static QUEUE: RefCell<VecDeque<(Request, Option<Blob>)>> = const { RefCell::new(VecDeque::new()) };
    static RUNNING: Cell<bool> = const { Cell::new(false) };
    static STOP: Cell<bool> = const { Cell::new(false) };
    static ENGINE: RefCell<Option<engine::Loaded>> = const { RefCell::new(None) };
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

/// Sends an event (and a file) to the page. A message that cannot be posted is logged: the page
/// is gone or the value cannot be cloned, and nobody else could be told.
pub(crate) fn post(event: &Event, file: Option<&Blob>) {
    let sent = envelope::pack(event, file).and_then(|message| {
        scope()
            .post_message(&message)
            .map_err(|e| envelope::describe(&e))
    });
    if let Err(why) = sent {
        web_sys::console::error_1(&format!("apr worker: cannot post an event: {why}").into());
    }
}

pub(crate) fn fail(task: Task, message: impl Into<String>) {
    post(
        &Event::Failed {
            task,
            message: message.into(),
        },
        None,
    );
}

/// Whether Stop was pressed since the current answer began.
pub(crate) fn stop_requested() -> bool {
    STOP.with(Cell::get)
}

/// Milliseconds on the worker's clock.
pub(crate) fn now_ms() -> f64 {
    scope().performance().map_or(0.0, |p| p.now())
}

/// Starts the worker: installs the message handler and tells the page it is ready.
pub fn start() {
    console_error_panic_hook::set_once();
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(|event: MessageEvent| {
        match envelope::unpack::<Request>(&event.data()) {
            Ok((Request::Stop, _)) => STOP.with(|s| s.set(true)),
            Ok((request, file)) => {
                QUEUE.with(|q| q.borrow_mut().push_back((request, file)));
                if !RUNNING.with(Cell::get) {
                    RUNNING.with(|r| r.set(true));
                    wasm_bindgen_futures::spawn_local(pump());
                }
            }
            Err(why) => fail(Task::Load, format!("the worker got {why}")),
        }
    });
    scope().set_onmessage(Some(handler.as_ref().unchecked_ref()));
    // The worker lives as long as the page: the handler is never dropped.
    handler.forget();
    post(
        &Event::Ready {
            backend: engine::backend_name(),
            cache: cache::available(),
        },
        None,
    );
}

/// Runs queued requests one at a time.
async fn pump() {
    while let Some((request, file)) = QUEUE.with(|q| q.borrow_mut().pop_front()) {
        handle(request, file).await;
    }
    RUNNING.with(|r| r.set(false));
}

async fn handle(request: Request, file: Option<Blob>) {
    match request {
        Request::Load {
            source,
            context,
            device,
        } => {
            // The old model goes first: two models may not fit side by side.
            ENGINE.with(|e| e.borrow_mut().take());
            match engine::load(source, file, context, device).await {
                Ok(loaded) => ENGINE.with(|e| *e.borrow_mut() = Some(loaded)),
                Err(why) => fail(Task::Load, why),
            }
        }
        Request::Chat {
            id,
            messages,
            params,
        } => {
            STOP.with(|s| s.set(false));
            let loaded = ENGINE.with(|e| e.borrow_mut().take());
            let Some(mut loaded) = loaded else {
                fail(Task::Chat, "load a model first");
                return;
            };
            if let Err(why) = loaded.chat(id, &messages, &params).await {
                fail(Task::Chat, why);
            }
            ENGINE.with(|e| *e.borrow_mut() = Some(loaded));
        }
        Request::Convert { id, name, options } => match file {
            Some(file) => tools::convert(id, &name, &options, &file).await,
            None => fail(Task::Convert, "no file came with the conversion request"),
        },
        Request::Inspect { name } => match file {
            Some(file) => tools::inspect(&name, &file),
            None => fail(Task::Inspect, "no file came with the inspect request"),
        },
        Request::ListCache => cache::report().await,
        Request::ClearCache { key } => {
            if let Err(why) = cache::remove(key.as_deref()).await {
                fail(Task::Cache, why);
            }
            cache::report().await;
        }
        Request::Stop => STOP.with(|s| s.set(true)),
    }
}

/// Lets the worker's event loop run (so Stop can arrive) without the 4 ms clamp of nested
/// timers: a message through a channel kept for the purpose comes back as the next task.
pub(crate) async fn yield_now() {
    thread_local! {
        static WAITING: RefCell<VecDeque<js_sys::Function>> = const { RefCell::new(VecDeque::new()) };
        static CHANNEL: Option<web_sys::MessageChannel> = {
            let channel = web_sys::MessageChannel::new().ok();
            if let Some(c) = &channel {
                let wake = Closure::<dyn FnMut(MessageEvent)>::new(|_: MessageEvent| {
                    if let Some(resolve) = WAITING.with(|w| w.borrow_mut().pop_front()) {
                        let _ = resolve.call0(&JsValue::NULL);
                    }
                });
                c.port2().set_onmessage(Some(wake.as_ref().unchecked_ref()));
                wake.forget();
            }
            channel
        };
    }
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        let posted = CHANNEL.with(|c| {
            c.as_ref()
                .is_some_and(|c| c.port1().post_message(&JsValue::NULL).is_ok())
        });
        if posted {
            WAITING.with(|w| w.borrow_mut().push_back(resolve));
        } else {
            // No channel: carry on at once rather than hang.
            let _ = resolve.call0(&JsValue::NULL);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}
