//! The allocator for binaries that run scripts: mimalloc with 2 MiB pages.
//!
//! A region keeps one Lua state per script (about 55 KiB each) and a tick
//! touches each once, so a 10,000-script tick walks some 550 MiB of small
//! objects that were last touched a tick ago. With glibc's allocator those
//! objects sit on 4 KiB pages scattered over one heap, and on a VM every
//! TLB miss is a nested page walk. mimalloc with large OS pages measured
//! 1.3x faster on one thread and 1.3-1.5x on two on that tick
//! (docs/performance.md, "Scripts"). What scripts compute does not depend
//! on the allocator: Lua's memory accounting counts requested sizes, and
//! no address reaches a script (tables and closures hash by creation
//! number, vendor/lua-src/PATCHES.md).
//!
//! Use it in a binary's root:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: metatopia_scripts::alloc::Allocator = metatopia_scripts::alloc::Allocator;
//!
//! fn main() {
//!     metatopia_scripts::alloc::init();
//!     // ...
//! }
//! ```

/// The global allocator type.
pub use mimalloc::MiMalloc as Allocator;

/// Lets the allocator use 2 MiB OS pages (transparent huge pages on Linux)
/// for the memory it reserves from now on. Call it first thing in `main`.
#[allow(unsafe_code)]
pub fn init() {
    // SAFETY: sets one of mimalloc's options (an atomic); valid at any
    // time and from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
    }
}
