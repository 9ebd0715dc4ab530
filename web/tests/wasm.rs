//! The worker protocol and the page's state types, in WebAssembly under Node
//! (wasm-bindgen-test): the envelope that carries every message through `postMessage`, and the
//! state machine of a conversation as the page drives it.
#![cfg(target_arch = "wasm32")]

use apr_web::envelope::{pack, unpack};
use apr_web::protocol::{
    CacheEntry, ChatMessage, ChatParams, Device, Event, GenStats, ModelSource, Request, Role, Task,
};
use apr_web::state::{Conversation, rates, segments};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn requests_and_events_survive_the_envelope() {
    let request = Request::Chat {
        id: 7,
        messages: vec![ChatMessage {
            role: Role::User,
            content: "héllo \"world\" 🦀\n".into(),
        }],
        params: ChatParams::default(),
    };
    let packed = pack(&request, None).unwrap();
    let (back, file) = unpack::<Request>(&packed).unwrap();
    assert_eq!(back, request);
    assert!(file.is_none());

    let event = Event::Cache {
        entries: vec![CacheEntry {
            key: "url-1-m.gguf".into(),
            name: "m.gguf".into(),
            bytes: 491_400_064,
            origin: "https://example.org/m.gguf".into(),
        }],
    };
    let (back, _) = unpack::<Event>(&pack(&event, None).unwrap()).unwrap();
    assert_eq!(back, event);
}

#[wasm_bindgen_test]
fn a_file_rides_beside_the_json_untouched() {
    let bytes = js_sys::Uint8Array::from(&[1u8, 2, 3, 4][..]);
    let parts = js_sys::Array::of1(&bytes);
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).unwrap();
    let request = Request::Load {
        source: ModelSource::File {
            name: "m.gguf".into(),
            size: 4,
        },
        context: 2048,
        device: Device::Cpu,
    };
    let (back, file) = unpack::<Request>(&pack(&request, Some(&blob)).unwrap()).unwrap();
    assert_eq!(back, request);
    assert_eq!(file.map(|f| f.size()), Some(4.0));
}

#[wasm_bindgen_test]
fn malformed_messages_are_errors_not_panics() {
    let object = js_sys::Object::new();
    assert!(unpack::<Request>(&object.into()).is_err());
    assert!(unpack::<Request>(&JsValue::NULL).is_err());
    assert!(unpack::<Request>(&JsValue::from_str("load")).is_err());
    let wrong = js_sys::Object::new();
    js_sys::Reflect::set(&wrong, &"json".into(), &r#"{"type":"warp"}"#.into()).unwrap();
    let err = unpack::<Request>(&wrong.into()).unwrap_err();
    assert!(err.contains("malformed"), "{err}");
}

#[wasm_bindgen_test]
fn a_conversation_streams_finishes_and_fails_as_the_page_drives_it() {
    let mut c = Conversation::default();
    let sent = c.ask("hi", 1).unwrap();
    assert_eq!(sent.len(), 1);
    for (i, piece) in ["He", "llo", "!"].iter().enumerate() {
        c.token(1, piece, i as f64 * 50.0);
    }
    assert_eq!(
        rates(&c.pending.as_ref().unwrap().arrivals, 4),
        vec![20.0, 20.0]
    );
    c.finish(1);
    assert_eq!(c.turns.last().unwrap().content, "Hello!");
    c.ask("again", 2).unwrap();
    c.fail(2);
    assert_eq!(c.turns.len(), 2);
    assert!(!c.busy());
    let done = Event::Done {
        id: 2,
        reason: "cancelled".into(),
        stats: GenStats::default(),
    };
    assert!(matches!(done, Event::Done { .. }));
    assert_eq!(
        serde_json::to_value(Event::Failed {
            task: Task::Chat,
            message: "x".into()
        })
        .unwrap()["task"],
        "chat"
    );
    assert_eq!(segments("a\n```rs\nfn f() {}\n```\n").len(), 2);
}
