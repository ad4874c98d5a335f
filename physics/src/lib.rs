//! metatopia-physics (work in progress).
