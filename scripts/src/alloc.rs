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

/// mimalloc's `mi_option_arena_purge_mult` (mimalloc 2 and 3, which
/// libmimalloc-sys does not name): how many purge delays pass before free
/// arena memory goes back to the OS.
const ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// Lets the allocator use 2 MiB OS pages (transparent huge pages on Linux)
/// for the memory it reserves from now on, and keeps free memory for about
/// a second before returning it to the OS (100 purge delays of 10 ms
/// instead of 10). A tick frees and allocates the same large buffers again
/// (results, inboxes): returned after 100 ms, they came back as page
/// faults and zeroed 2 MiB pages, about 100 a tick in the 10,000-script
/// tick (docs/performance.md, "Scripts"). Call it first thing in `main`.
#[allow(unsafe_code)]
pub fn init() {
    // SAFETY: sets two of mimalloc's options (atomics); valid at any time
    // and from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1);
        libmimalloc_sys::mi_option_set(ARENA_PURGE_MULT, 100);
    }
}
