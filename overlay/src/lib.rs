//! Metatopia overlay (work in progress).
