//! Heavy mode's cost: for every scenario of the determinism suite (or the
//! ones named), the time per tick of a normal run and of a heavy-mode run
//! (after every tick: snapshot, drop the sims and the script host, restore,
//! continue), the median of ROUNDS runs each, and their ratio.
//!
//! `cargo run --release -p metatopia-tests --example determinism_heavy -- [ROUNDS] [NAME...]`
//! (default 7 rounds, every scenario). Numbers go in docs/performance.md;
//! no test asserts them.

use std::time::Instant;

use metatopia_tests::determinism::{self, Mode};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(7);
    let names: Vec<String> = args.collect();
    println!("scenario                 ticks  normal µs/tick  heavy µs/tick  ratio");
    let (mut all_normal, mut all_heavy) = (0.0, 0.0);
    for case in determinism::cases()? {
        if !names.is_empty() && !names.contains(&case.name) {
            continue;
        }
        let ticks = case.ticks().max(1) as f64;
        let time = |mode: &Mode| -> anyhow::Result<f64> {
            let mut v = Vec::new();
            for _ in 0..rounds {
                let start = Instant::now();
                determinism::run(&case, mode, false)?;
                v.push(start.elapsed().as_secs_f64() * 1e6 / ticks);
            }
            Ok(median(v))
        };
        let normal = time(&Mode::Normal)?;
        let heavy = time(&Mode::Heavy)?;
        all_normal += normal * ticks;
        all_heavy += heavy * ticks;
        println!(
            "{:<24} {:>5}  {normal:>14.1}  {heavy:>13.1}  {:>5.1}",
            case.name,
            case.ticks(),
            heavy / normal
        );
    }
    println!(
        "whole suite: normal {:.1} ms, heavy {:.1} ms, ratio {:.1}",
        all_normal / 1e3,
        all_heavy / 1e3,
        all_heavy / all_normal
    );
    Ok(())
}
