//! Cross-crate scenario helpers.
