//! The Hugging Face hub.
