//! The determinism suite: every scenario in `tests/determinism/` (scripts,
//! the admin rule, chat, physics) gives its golden hashes
//! (`tests/determinism/golden.toml`), and the same hash after every tick
//! on rayon pools of 1, 2 and 16 threads, in a second process, in heavy
//! mode (snapshot, drop everything, restore, continue after every tick)
//! and after restarts from a snapshot at ticks drawn from a seed.
//!
//! A difference names the scenario, the variant and the first tick that
//! differs, and for scenario files which element and field (the desync
//! report, `metatopia_node::desync`).
//!
//! Bless new golden hashes with
//! `METATOPIA_BLESS=1 cargo test -p metatopia-tests --test determinism`:
//! the run writes the file and fails; review and commit it.
//! `SIM_SEED=N` picks other restart ticks.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use metatopia_node::desync::{diff_states, first_divergence};
use metatopia_sim::{hex, unhex32};
use metatopia_tests::determinism::{self, Case, Mode, States, Trace};
use rand::{Rng, SeedableRng};

/// Restart ticks come from this seed unless `SIM_SEED` is set.
const RESTART_SEED: u64 = 16;
/// Restarts per scenario.
const RESTARTS: usize = 3;
/// Set in the second process: the child test prints its traces.
const CHILD_ENV: &str = "METATOPIA_DETERMINISM_CHILD";

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        let cases = determinism::cases().unwrap();
        assert!(cases.len() >= 8, "the suite has its scenarios: {cases:?}");
        cases
    })
}

/// The normal run of every case, with its states: the reference.
fn reference() -> &'static BTreeMap<String, (Trace, States)> {
    static REF: OnceLock<BTreeMap<String, (Trace, States)>> = OnceLock::new();
    REF.get_or_init(|| {
        cases()
            .iter()
            .map(|c| {
                let r = determinism::run(c, &Mode::Normal, true)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", c.name));
                assert_eq!(r.0.len() as u64, c.ticks(), "{}: every tick ran", c.name);
                (c.name.clone(), r)
            })
            .collect()
    })
}

/// `None` if `got` matches the reference of `case`, else the report: the
/// first differing tick, both hashes, and what differs in the state.
fn compare(case: &Case, variant: &str, got: &Trace, got_states: &States) -> Option<String> {
    let (want, want_states) = &reference()[&case.name];
    let tick = first_divergence(want, got)?;
    let at = |tr: &Trace| {
        tr.iter()
            .find(|(t, _)| *t == tick)
            .map_or("absent".into(), |(_, h)| hex(h))
    };
    let mut report = format!(
        "{} ({variant}): first differing tick {tick}: expected {}, got {}",
        case.name,
        at(want),
        at(got)
    );
    let index = tick.checked_sub(1).map(|i| i as usize);
    if let Some(i) = index
        && let (Some(a), Some(b)) = (want_states.get(i), got_states.get(i))
    {
        for (region, sa) in a {
            let Some(sb) = b.get(region) else { continue };
            let (diffs, more) = diff_states(sa, sb);
            for d in diffs {
                let _ = write!(report, "\n  region {region}: {d}");
            }
            if more > 0 {
                let _ = write!(report, "\n  region {region}: and {more} more");
            }
        }
    }
    Some(report)
}

fn fail_if_any(failures: Vec<String>, hint: &str) {
    assert!(
        failures.is_empty(),
        "{} difference(s):\n{}\n{hint}",
        failures.len(),
        failures.join("\n")
    );
}

/// The golden file's text for the reference traces: the hash after a
/// quarter, half, three quarters and all of each scenario's ticks.
fn golden_text() -> String {
    let mut out = String::from(
        "# Golden state hashes of the determinism suite (tests/determinism/*.toml):\n\
         # scenario -> ticks executed -> state hash. Written by\n\
         # `METATOPIA_BLESS=1 cargo test -p metatopia-tests --test determinism`\n\
         # (which then fails); review the change and commit this file.\n",
    );
    for (name, (trace, _)) in reference() {
        let _ = write!(out, "\n[{name}]\n");
        for (t, h) in checkpoints(trace) {
            let _ = writeln!(out, "{t} = \"{}\"", hex(&h));
        }
    }
    out
}

fn checkpoints(trace: &Trace) -> Vec<(u64, [u8; 32])> {
    let n = trace.len();
    let mut idx = vec![n / 4, n / 2, 3 * n / 4, n];
    idx.retain(|i| *i > 0);
    idx.dedup();
    idx.into_iter().map(|i| trace[i - 1]).collect()
}

#[test]
fn golden_hashes_match() {
    let path = determinism::golden_path();
    let bless = std::env::var("METATOPIA_BLESS").is_ok_and(|v| v == "1");
    let golden: Option<toml::Table> = std::fs::read_to_string(&path)
        .ok()
        .map(|t| t.parse().expect("golden.toml is valid TOML"));
    let missing = golden
        .as_ref()
        .is_none_or(|g| reference().keys().any(|name| !g.contains_key(name)));
    if bless || missing {
        std::fs::write(&path, golden_text()).unwrap();
        panic!(
            "{} {}: review it and commit it, then run the tests again \
             (a run that writes its own golden hashes never passes)",
            if bless {
                "blessed"
            } else {
                "golden hashes were missing; wrote"
            },
            path.display()
        );
    }
    let golden = golden.unwrap();
    let mut failures = Vec::new();
    for name in golden.keys() {
        if !reference().contains_key(name) {
            failures.push(format!("{name}: in golden.toml but no such scenario"));
        }
    }
    for (name, (trace, _)) in reference() {
        let table = golden[name].as_table().expect("a table per scenario");
        let want: Vec<(u64, [u8; 32])> = table
            .iter()
            .map(|(t, h)| {
                (
                    t.parse().expect("ticks"),
                    h.as_str().and_then(unhex32).expect("64 hex digits"),
                )
            })
            .collect();
        if let Some(t) = first_divergence(&want, &checkpoints(trace)) {
            failures.push(format!(
                "{name}: differs from its golden hash at tick {t} \
                 (first differing checkpoint; the behaviour or the state format changed)"
            ));
        }
    }
    fail_if_any(
        failures,
        "if the change is intended, bless: METATOPIA_BLESS=1 cargo test -p metatopia-tests --test determinism",
    );
}

#[test]
fn same_hashes_on_1_2_and_16_threads() {
    let mut failures = Vec::new();
    for threads in [1, 2, 16] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for case in cases() {
            let (trace, states) = pool
                .install(|| determinism::run(case, &Mode::Normal, true))
                .unwrap();
            failures.extend(compare(
                case,
                &format!("{threads} threads"),
                &trace,
                &states,
            ));
        }
    }
    fail_if_any(failures, "");
}

#[test]
fn same_hashes_in_heavy_mode() {
    let mut failures = Vec::new();
    for case in cases() {
        match determinism::run(case, &Mode::Heavy, true) {
            Ok((trace, states)) => failures.extend(compare(case, "heavy mode", &trace, &states)),
            Err(e) => failures.push(format!("{} (heavy mode): {e:#}", case.name)),
        }
    }
    fail_if_any(failures, "");
}

#[test]
fn same_hashes_after_restarts_at_seeded_ticks() {
    let seed = std::env::var("SIM_SEED")
        .map(|s| s.parse().expect("SIM_SEED is a number"))
        .unwrap_or(RESTART_SEED);
    println!("seed {seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut failures = Vec::new();
    for case in cases() {
        let ticks = case.ticks();
        let mut at: Vec<u64> = (0..RESTARTS).map(|_| rng.random_range(1..ticks)).collect();
        at.sort();
        at.dedup();
        let variant = format!("restarts after ticks {at:?}");
        match determinism::run(case, &Mode::Restart(at), true) {
            Ok((trace, states)) => failures.extend(compare(case, &variant, &trace, &states)),
            Err(e) => failures.push(format!("{} ({variant}): {e:#}", case.name)),
        }
    }
    fail_if_any(failures, &format!("reproduce with SIM_SEED={seed}"));
}

#[test]
fn same_hashes_in_a_second_process() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_process_trace",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .env("RAYON_NUM_THREADS", "3")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut traces: BTreeMap<String, Trace> = BTreeMap::new();
    for line in stdout.lines() {
        let mut w = line.split(' ');
        if w.next() != Some("trace") {
            continue;
        }
        let (Some(name), Some(t), Some(h)) = (w.next(), w.next(), w.next()) else {
            panic!("bad trace line {line:?}");
        };
        traces
            .entry(name.into())
            .or_default()
            .push((t.parse().unwrap(), unhex32(h).unwrap()));
    }
    let mut failures = Vec::new();
    for case in cases() {
        let got = traces.remove(&case.name).unwrap_or_default();
        failures.extend(compare(case, "second process", &got, &Vec::new()));
    }
    fail_if_any(
        failures,
        "compare the two with `metatopia run FILE --trace` and `metatopia desync`",
    );
}

/// Run by `same_hashes_in_a_second_process` in a child process: prints
/// every case's trace.
#[test]
#[ignore = "run in a child process by same_hashes_in_a_second_process"]
fn child_process_trace() {
    assert_eq!(
        std::env::var(CHILD_ENV).as_deref(),
        Ok("1"),
        "only run as the child of same_hashes_in_a_second_process"
    );
    // The harness prints "test child_process_trace ... " without a newline.
    println!();
    for case in cases() {
        let (trace, _) = determinism::run(case, &Mode::Normal, false).unwrap();
        for (t, h) in trace {
            println!("trace {} {t} {}", case.name, hex(&h));
        }
    }
}
