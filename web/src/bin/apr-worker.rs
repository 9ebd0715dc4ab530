//! The apr worker's entry point: the Web Worker that owns the model (see `apr_web::worker`).

#[cfg(target_arch = "wasm32")]
fn main() {
    apr_web::worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("apr-worker runs in a browser: build it with trunk (see the README)");
    std::process::exit(2);
}
