//! Metatopia sim.
