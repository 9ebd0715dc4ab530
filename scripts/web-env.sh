# Sourced by the scripts that build the web app: puts the tools setup.sh installed on PATH
# (cargo's bin folder for trunk and wasm-bindgen, npm's binaryen for a wasm-opt that works).
export PATH="$HOME/.cargo/bin:$PWD/tests/web/node_modules/.bin:$PATH"
