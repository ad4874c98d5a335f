//! The replication harness with the real engine: replica cores driven by
//! `replica::member::run` against commonware Simplex, in commonware's
//! deterministic runtime over its simulated network, everything from one
//! seed (`deterministic::Runner` is seeded with it; keys, link latencies
//! and the fault plan are drawn from it).
//!
//! The plan of a run: steady ticking; then, with the faults on, a crash of
//! one member (its whole task tree is aborted, its links removed) and its
//! restart from its log with the same vote journal; a byzantine member
//! whose proposals skip a tick; a window of lossy, jittery links; a
//! partition that cuts the group in two; then healing. Checks: the logs of
//! all members agree tick by tick (digest and region hash), no tick is
//! logged twice, every acknowledged input is in the log once at its tick,
//! and after healing every member finalizes new ticks and they converge.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use commonware_cryptography::ed25519::PublicKey;
use commonware_p2p::simulated::{self, Link, Network, Oracle};
use commonware_runtime::{Clock, Handle, Quota, Runner as _, Spawner, Supervisor, deterministic};
use commonware_utils::Probability;
use commonware_utils::channel::mpsc;
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use metatopia_node::replica::core::Output;
use metatopia_node::replica::member::{self, Faults, now_ms};
use metatopia_node::replica::simplex::{self, Timing, public_key};
use metatopia_node::replica::wire::player_of;
use metatopia_node::replica::{
    Config, Digest, Manifest, MemSources, Proposal, Replica, SignedInput,
};
use metatopia_physics::Region;
use metatopia_sim::input::InputKind;
use metatopia_sim::state::Settings;
use metatopia_sim::{NoScripts, PlayerId, RegionId};

/// A member's durable log: tick → (digest, region hash, proposal).
type Log = BTreeMap<u64, (Digest, Digest, Arc<Proposal>)>;

/// What the members report, shared with the checks.
#[derive(Debug, Default)]
struct Record {
    logs: Vec<Log>,
    acks: BTreeMap<(PlayerId, u64), u64>,
    errors: Vec<String>,
    desyncs: u64,
    /// When each input was sent, simulated ms.
    sent_at: BTreeMap<(PlayerId, u64), u64>,
    /// Per member: when each tick became visible (notarized) there.
    visible_at: Vec<BTreeMap<u64, u64>>,
    /// Per member: when each tick was committed (finalized) there.
    committed_at: Vec<BTreeMap<u64, u64>>,
}

/// The result of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Members.
    pub members: usize,
    /// Ticks every member logged.
    pub common_ticks: u64,
    /// Ticks logged by the most advanced member.
    pub max_ticks: u64,
    /// Inputs acknowledged.
    pub acked: usize,
    /// Ticks finalized after healing by the slowest member.
    pub after_heal: u64,
    /// Before the faults: input sent → its tick notarized on every member,
    /// p50 and p99, simulated ms.
    pub visible_ms: (u64, u64),
    /// Before the faults: input sent → its tick finalized on every member.
    pub finalized_ms: (u64, u64),
}

struct Member {
    key: SigningKey,
    inputs: mpsc::Sender<SignedInput>,
    handle: Option<Handle<()>>,
    incarnation: u32,
}

impl Member {
    /// Stops the member if it runs and starts it again from its log, with
    /// the same vote journal.
    fn restart(
        &mut self,
        context: &deterministic::Context,
        shared: &Arc<Shared>,
        idx: usize,
        faults: Faults,
    ) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
        self.incarnation += 1;
        let (handle, inputs) = start_member(
            context,
            shared,
            idx,
            self.key.clone(),
            self.incarnation,
            faults,
        );
        self.handle = Some(handle);
        self.inputs = inputs;
    }
}

const QUOTA: Quota = Quota::per_second(std::num::NonZeroU32::new(1024).expect("not zero"));
const LABELS: [&str; 7] = [
    "member0", "member1", "member2", "member3", "member4", "member5", "member6",
];

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

async fn link(
    oracle: &Oracle<PublicKey, deterministic::Context>,
    a: &PublicKey,
    b: &PublicKey,
    latency: u64,
    jitter: u64,
    success: f64,
) {
    let _ = oracle.remove_link(a.clone(), b.clone()).await;
    let link = Link {
        latency: ms(latency),
        jitter: ms(jitter),
        success_rate: Probability::from_f64(success).expect("a probability"),
    };
    let _ = oracle.add_link(a.clone(), b.clone(), link).await;
}

/// Sets every link `i → j` for which `pick(i, j)` holds: to the base
/// latency with `jitter` and `success`, or removed (`None`).
async fn relink(
    oracle: &Oracle<PublicKey, deterministic::Context>,
    pks: &[PublicKey],
    latency: &[Vec<u64>],
    pick: impl Fn(usize, usize) -> bool,
    quality: Option<(u64, f64)>,
) {
    for i in 0..pks.len() {
        for j in 0..pks.len() {
            if i == j || !pick(i, j) {
                continue;
            }
            match quality {
                Some((jitter, success)) => {
                    link(oracle, &pks[i], &pks[j], latency[i][j], jitter, success).await;
                }
                None => {
                    let _ = oracle.remove_link(pks[i].clone(), pks[j].clone()).await;
                }
            }
        }
    }
}

/// Everything a member needs to (re)start.
struct Shared {
    oracle: Oracle<PublicKey, deterministic::Context>,
    manifest: Manifest,
    record: Arc<Mutex<Record>>,
    sources: Vec<Arc<MemSources>>,
}

fn boot(shared: &Shared, idx: usize, key: &SigningKey) -> Replica {
    let manifest = &shared.manifest;
    let mut region: Region = manifest.genesis();
    let mut digest = manifest.genesis_digest();
    let log = shared
        .record
        .lock()
        .map(|r| r.logs[idx].clone())
        .unwrap_or_default();
    for (d, _, p) in log.values() {
        region
            .tick(&p.batch(), &NoScripts, &p.inbox())
            .expect("a logged proposal executes again");
        digest = *d;
    }
    let cfg = Config {
        checkpoint_every: 20,
        rollback_every: 20,
        ..Config::default()
    };
    Replica::new(
        cfg,
        manifest.clone(),
        key.clone(),
        Arc::new(NoScripts),
        shared.sources[idx].clone(),
        region,
        digest,
    )
}

/// Long on purpose: wires one member (network, engine, journal, driver) in the order commonware needs.
fn start_member(
    context: &deterministic::Context,
    shared: &Arc<Shared>,
    idx: usize,
    key: SigningKey,
    incarnation: u32,
    faults: Faults,
) -> (Handle<()>, mpsc::Sender<SignedInput>) {
    let (in_tx, in_rx) = mpsc::channel(1024);
    let shared = shared.clone();
    let handle = context
        .child(LABELS[idx])
        .with_attribute("incarnation", incarnation)
        .spawn(move |ctx| async move {
            let me = public_key(player_of(&key)).expect("an ed25519 key");
            let control = shared.oracle.control(me);
            let votes = control
                .register(simplex::CHANNEL_VOTES, QUOTA)
                .await
                .expect("register");
            let certs = control
                .register(simplex::CHANNEL_CERTIFICATES, QUOTA)
                .await
                .expect("register");
            let resolver = control
                .register(simplex::CHANNEL_RESOLVER, QUOTA)
                .await
                .expect("register");
            let members = control
                .register(simplex::CHANNEL_MEMBERS, QUOTA)
                .await
                .expect("register");
            let core = boot(&shared, idx, &key);
            let (app, engine) = simplex::bridge();
            let started = simplex::start(
                ctx.child("engine"),
                &key,
                &shared.manifest.members,
                shared.manifest.genesis_digest(),
                format!("simplex-{idx}"),
                &Timing {
                    // Short terms, so leadership moves around the group
                    // (and reaches the byzantine member) within a run.
                    term_views: 20,
                    ..Timing::default()
                },
                control.clone(),
                app,
                votes,
                certs,
                resolver,
            );
            if let Err(e) = started {
                if let Ok(mut r) = shared.record.lock() {
                    r.errors.push(format!("member {idx}: {e}"));
                }
                return;
            }
            let record = shared.record.clone();
            let clock = ctx.child("clock");
            let sink_clock = ctx.child("sink_clock");
            member::run(
                clock,
                core,
                engine,
                members,
                in_rx,
                None,
                faults,
                move |out| {
                    let now = now_ms(&sink_clock);
                    let Ok(mut r) = record.lock() else { return };
                    match out {
                        Output::Visible(p) => {
                            // A notarized tick shows every tick before it.
                            let from = r.visible_at[idx].keys().next_back().map_or(0, |t| t + 1);
                            for t in from..=p.tick {
                                r.visible_at[idx].insert(t, now);
                            }
                        }
                        Output::Commit(c) => {
                            let tick = c.proposal.tick;
                            r.committed_at[idx].entry(tick).or_insert(now);
                            r.visible_at[idx].entry(tick).or_insert(now);
                            let entry = (c.proposal.digest(), c.hash, c.proposal);
                            if r.logs[idx].insert(tick, entry).is_some() {
                                r.errors
                                    .push(format!("member {idx} logged tick {tick} twice"));
                            }
                        }
                        Output::Committed {
                            player, seq, tick, ..
                        } => {
                            if let Some(t) = r.acks.insert((player, seq), tick)
                                && t != tick
                            {
                                r.errors.push(format!(
                                    "input ({player}, {seq}) acknowledged at ticks {t} and {tick}"
                                ));
                            }
                        }
                        Output::Desync(_) => r.desyncs += 1,
                        _ => {}
                    }
                },
            )
            .await;
        });
    (handle, in_tx)
}

/// One seeded run of about `seconds` of simulated time (faults in the
/// middle third, healing in the last third).
pub fn run_seed(seed: u64, n: usize, seconds: u64) -> Result<Outcome, String> {
    let cfg = deterministic::Config::new()
        .with_seed(seed)
        .with_timeout(Some(Duration::from_secs(seconds * 20 + 60)));
    deterministic::Runner::new(cfg).start(|context| run(context, seed, n, seconds))
}

/// Long on purpose: the whole simulated run (start, faults, heal, wait) over shared handles; test harness code read as one sequence.
async fn run(
    context: deterministic::Context,
    seed: u64,
    n: usize,
    seconds: u64,
) -> Result<Outcome, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let keys: Vec<SigningKey> = (0..n)
        .map(|_| SigningKey::from_bytes(&rng.random()))
        .collect();
    let players: Vec<SigningKey> = (0..2)
        .map(|_| SigningKey::from_bytes(&rng.random()))
        .collect();
    let manifest = Manifest {
        region: RegionId(9),
        settings: Settings::default(),
        founders: vec![player_of(&players[0])],
        members: keys.iter().map(player_of).collect(),
    };
    let pks: Vec<PublicKey> = manifest
        .members
        .iter()
        .map(|m| public_key(*m).expect("an ed25519 key"))
        .collect();
    let (network, oracle) = Network::new_with_peers(
        context.child("network"),
        simulated::Config {
            max_size: 16 << 20,
            max_peers_per_set: std::num::NonZeroUsize::new(n).expect("n > 0"),
            disconnect_on_block: true,
            tracked_peer_sets: std::num::NonZeroUsize::MIN,
        },
        pks.clone(),
    )
    .await;
    network.start();
    let latency: Vec<Vec<u64>> = (0..n)
        .map(|_| (0..n).map(|_| rng.random_range(5..20)).collect())
        .collect();
    relink(&oracle, &pks, &latency, |_, _| true, Some((1, 1.0))).await;
    let record = Arc::new(Mutex::new(Record {
        logs: vec![Log::new(); n],
        visible_at: vec![BTreeMap::new(); n],
        committed_at: vec![BTreeMap::new(); n],
        ..Record::default()
    }));
    let shared = Arc::new(Shared {
        oracle: oracle.clone(),
        manifest: manifest.clone(),
        record: record.clone(),
        sources: (0..n).map(|_| Arc::new(MemSources::default())).collect(),
    });
    let byzantine = rng.random_range(0..n);
    let mut members: Vec<Member> = keys
        .into_iter()
        .enumerate()
        .map(|(i, key)| {
            let faults = Faults {
                invalid_proposals: false,
            };
            let (handle, inputs) = start_member(&context, &shared, i, key.clone(), 0, faults);
            Member {
                key,
                inputs,
                handle: Some(handle),
                incarnation: 0,
            }
        })
        .collect();
    let third = seconds * 1000 / 3;
    let t0 = now_ms(&context);
    let mut seqs = [1u64; 2];
    let crash = rng.random_range(0..n);
    let crash_at = t0 + third + rng.random_range(0..third / 4);
    let restart_at = crash_at + rng.random_range(300..1500);
    let lossy_at = t0 + third + third / 2;
    let lossy_until = lossy_at + rng.random_range(500..1500);
    let part_at = lossy_until + 200;
    let part_until = part_at + rng.random_range(300..1500);
    let heal_at = t0 + 2 * third;
    let side: BTreeSet<usize> = (0..n).filter(|i| i % 2 == 0).collect();
    let mut state = 0;
    let mut ticks_at_heal = 0;
    // Clients send an input every 20 ms to a random member, until healing.
    while now_ms(&context) < t0 + seconds * 1000 {
        context.sleep(ms(20)).await;
        let now = now_ms(&context);
        if now < heal_at {
            let c = rng.random_range(0..2);
            let kind = if seqs[c] == 1 {
                InputKind::Join {
                    name: format!("p{c}"),
                }
            } else {
                InputKind::Say {
                    text: format!("line {}", seqs[c]),
                    radius: None,
                }
            };
            let input = SignedInput::sign(&players[c], manifest.region, seqs[c], kind);
            if let Ok(mut r) = record.lock() {
                r.sent_at.insert((input.input.player, seqs[c]), now);
            }
            seqs[c] += 1;
            let j = rng.random_range(0..n);
            let _ = members[j].inputs.try_send(input);
        }
        // The fault plan, one step at a time.
        if state == 0 && now >= crash_at {
            state = 1;
            if let Some(h) = members[crash].handle.take() {
                h.abort();
            }
            relink(
                &oracle,
                &pks,
                &latency,
                |i, j| i == crash || j == crash,
                None,
            )
            .await;
        }
        if state == 1 && now >= restart_at {
            state = 2;
            let touches = |i: usize, j: usize| i == crash || j == crash;
            relink(&oracle, &pks, &latency, touches, Some((1, 1.0))).await;
            members[crash].restart(&context, &shared, crash, Faults::default());
            // The byzantine member turns bad (restarted with lying on).
            if byzantine != crash {
                let lying = Faults {
                    invalid_proposals: true,
                };
                members[byzantine].restart(&context, &shared, byzantine, lying);
            }
        }
        if state == 2 && now >= lossy_at {
            state = 3;
            relink(&oracle, &pks, &latency, |_, _| true, Some((10, 0.9))).await;
        }
        if state == 3 && now >= lossy_until {
            state = 4;
            relink(&oracle, &pks, &latency, |_, _| true, Some((1, 1.0))).await;
        }
        if state == 4 && now >= part_at {
            state = 5;
            let across = |i: usize, j: usize| side.contains(&i) != side.contains(&j);
            relink(&oracle, &pks, &latency, across, None).await;
        }
        if state == 5 && now >= part_until {
            state = 6;
            let across = |i: usize, j: usize| side.contains(&i) != side.contains(&j);
            relink(&oracle, &pks, &latency, across, Some((1, 1.0))).await;
        }
        if state == 6 && now >= heal_at {
            state = 7;
            // The byzantine member is replaced by an honest restart.
            members[byzantine].restart(&context, &shared, byzantine, Faults::default());
            ticks_at_heal = record
                .lock()
                .map(|r| r.logs.iter().map(|l| l.len() as u64).min().unwrap_or(0))
                .unwrap_or(0);
        }
    }
    for m in &mut members {
        if let Some(h) = m.handle.take() {
            h.abort();
        }
    }
    let r = record.lock().map_err(|_| "record poisoned")?;
    check(&r, seed, n, ticks_at_heal, crash_at)
}

/// p50 and p99 of `v`.
fn percentiles(mut v: Vec<u64>) -> (u64, u64) {
    if v.is_empty() {
        return (0, 0);
    }
    v.sort_unstable();
    let at = |q: usize| v[(v.len() - 1) * q / 100];
    (at(50), at(99))
}

/// Latencies of the inputs sent before `until`: to notarized and to
/// finalized on every member.
fn latencies(r: &Record, until: u64) -> ((u64, u64), (u64, u64)) {
    let mut visible = Vec::new();
    let mut finalized = Vec::new();
    for (id, tick) in &r.acks {
        let Some(sent) = r.sent_at.get(id).copied().filter(|t| *t < until) else {
            continue;
        };
        let all = |at: &Vec<BTreeMap<u64, u64>>| {
            at.iter()
                .map(|m| m.get(tick).copied())
                .collect::<Option<Vec<u64>>>()
                .and_then(|v| v.into_iter().max())
        };
        if let Some(t) = all(&r.visible_at) {
            visible.push(t.saturating_sub(sent));
        }
        if let Some(t) = all(&r.committed_at) {
            finalized.push(t.saturating_sub(sent));
        }
    }
    (percentiles(visible), percentiles(finalized))
}

/// Long on purpose: one assertion block per property, each with its message.
fn check(
    r: &Record,
    seed: u64,
    n: usize,
    ticks_at_heal: u64,
    faults_at: u64,
) -> Result<Outcome, String> {
    if let Some(e) = r.errors.first() {
        return Err(e.clone());
    }
    // Safety: every tick two members logged has the same digest and hash.
    let mut reference: BTreeMap<u64, (Digest, Digest)> = BTreeMap::new();
    for (i, log) in r.logs.iter().enumerate() {
        let mut expect = 0;
        for (tick, (d, h, _)) in log {
            if *tick != expect {
                return Err(format!("member {i} has a gap before tick {tick}"));
            }
            expect = tick + 1;
            match reference.get(tick) {
                Some(x) if *x != (*d, *h) => {
                    return Err(format!("member {i} differs at tick {tick}"));
                }
                Some(_) => {}
                None => {
                    reference.insert(*tick, (*d, *h));
                }
            }
        }
    }
    // Acknowledged inputs: in the log once, at their tick.
    let longest = r.logs.iter().max_by_key(|l| l.len()).ok_or("no members")?;
    let mut seen = BTreeMap::new();
    for (tick, (_, _, p)) in longest {
        for s in &p.inputs {
            if let Some(t) = seen.insert((s.input.player, s.input.seq), *tick) {
                return Err(format!(
                    "input ({}, {}) is in ticks {t} and {tick}",
                    s.input.player, s.input.seq
                ));
            }
        }
    }
    for ((player, seq), tick) in &r.acks {
        if seen.get(&(*player, *seq)) != Some(tick) {
            return Err(format!(
                "acknowledged input ({player}, {seq}) of tick {tick} is not in the log there"
            ));
        }
    }
    let min = r.logs.iter().map(|l| l.len() as u64).min().unwrap_or(0);
    let max = r.logs.iter().map(|l| l.len() as u64).max().unwrap_or(0);
    // Liveness: every member finalized ticks after healing, and the
    // slowest is within a second of the fastest.
    let lengths: Vec<usize> = r.logs.iter().map(|l| l.len()).collect();
    if min <= ticks_at_heal {
        return Err(format!(
            "no progress after healing: the slowest member logged {min} ticks, {ticks_at_heal} at healing (logs: {lengths:?})"
        ));
    }
    if max - min > 20 {
        return Err(format!("members did not converge: {min} to {max} ticks"));
    }
    let (visible_ms, finalized_ms) = latencies(r, faults_at);
    Ok(Outcome {
        seed,
        members: n,
        common_ticks: min,
        max_ticks: max,
        acked: r.acks.len(),
        after_heal: min - ticks_at_heal,
        visible_ms,
        finalized_ms,
    })
}
