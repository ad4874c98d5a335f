//! metatopia-scripts (work in progress).
