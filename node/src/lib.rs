//! Metatopia node.
