//! The apr web app's entry point: mounts the page (see `apr_web::app`).

#[cfg(target_arch = "wasm32")]
fn main() {
    apr_web::app::mount();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("apr-web runs in a browser: build it with trunk (see the README)");
    std::process::exit(2);
}
