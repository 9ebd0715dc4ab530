//! `apr import SOURCE [-o OUT] [--quantization Q]`.
