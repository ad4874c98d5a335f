//! `metatopia-trace [--heavy] FILE...`: prints `trace NAME TICK HASH`
//! after every tick of each scenario file or physics scene (NAME: the file
//! name without `.toml`), or `skip NAME REASON` for one it cannot run
//! (scripts: no Lua here). `--heavy`: snapshot, drop and restore the state
//! after every tick (heavy mode). Built for wasm32-wasip1 by
//! `.ci/determinism wasm`, which compares the hashes with the golden ones.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut failed = false;
    let mut heavy = false;
    for arg in std::env::args().skip(1) {
        if arg == "--heavy" {
            heavy = true;
            continue;
        }
        let path = Path::new(&arg);
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(&arg)
            .to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{arg}: {e}");
                failed = true;
                continue;
            }
        };
        if metatopia_scenario::trace::has_scripts(&text) {
            println!("skip {name} has scripts: they need Lua");
            continue;
        }
        match metatopia_scenario::trace::run(&text, path.parent(), heavy) {
            Ok(trace) => {
                for (t, h) in trace {
                    println!("trace {name} {t} {}", metatopia_sim::hex(&h));
                }
            }
            Err(e) => {
                eprintln!("{arg}: {e:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
