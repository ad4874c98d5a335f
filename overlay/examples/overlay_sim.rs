//! The overlay simulator: the real sans-IO core on a simulated network.
//!
//! ```text
//! cargo run --release -p metatopia-overlay --example overlay_sim -- \
//!     --sizes 1000,10000,100000 --churn 1000 --moving 250,1000,4000 --seed 1
//! ```
//!
//! Prints markdown tables: static routing and neighbour quality against the
//! exact global Delaunay oracle (uniform and clustered placement), routing
//! and recovery under churn, and VAST-style topology consistency, drift,
//! recovery steps and traffic while peers move (random waypoint and VAST's
//! cluster model).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use metatopia_overlay::simnet::{SimConfig, SimNet};
use metatopia_overlay::{Config, Event, NodeId, Oracle, Point, Rect};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const M: i64 = 1000; // millimetres per metre

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Uniform,
    Clustered,
}

struct Args {
    sizes: Vec<usize>,
    churn: Vec<usize>,
    moving: Vec<usize>,
    seed: u64,
    queries: usize,
    moving_steps: u64,
    placements: Vec<Placement>,
    models: Vec<Model>,
}

fn parse_list(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<usize>().context("bad number"))
        .collect()
}

fn args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![1000, 10_000],
        churn: vec![1000],
        moving: vec![1000],
        seed: 1,
        queries: 10_000,
        moving_steps: 200,
        placements: vec![Placement::Uniform, Placement::Clustered],
        models: vec![Model::Waypoint, Model::Cluster],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().context("missing value")?;
        match k.as_str() {
            "--sizes" => a.sizes = parse_list(&v)?,
            "--churn" => a.churn = parse_list(&v)?,
            "--moving" => a.moving = parse_list(&v)?,
            "--seed" => a.seed = v.parse()?,
            "--queries" => a.queries = v.parse()?,
            "--moving-steps" => a.moving_steps = v.parse()?,
            "--placements" => {
                a.placements = v
                    .split(',')
                    .map(|p| match p {
                        "uniform" => Ok(Placement::Uniform),
                        "clustered" => Ok(Placement::Clustered),
                        _ => bail!("unknown placement {p}"),
                    })
                    .collect::<Result<_>>()?;
            }
            "--models" => {
                a.models = v
                    .split(',')
                    .map(|m| match m {
                        "waypoint" => Ok(Model::Waypoint),
                        "cluster" => Ok(Model::Cluster),
                        _ => bail!("unknown model {m}"),
                    })
                    .collect::<Result<_>>()?;
            }
            _ => bail!("unknown flag {k}"),
        }
    }
    Ok(a)
}

fn ln2(n: usize) -> f64 {
    let l = (n as f64).ln();
    l * l
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// World side for a fixed density: one peer per `cell_m`² on average.
fn side_mm(n: usize, cell_m: f64) -> i64 {
    (cell_m * (n as f64).sqrt() * M as f64) as i64
}

fn config(side: i64, aoi_m: i64, heartbeat_ms: u64) -> Config {
    Config {
        aoi_radius_mm: (aoi_m * M) as u64,
        aoi_buffer_mm: (15 * M) as u64,
        close_radius_mm: (5 * M) as u64,
        world: Rect {
            min: Point::new(0, 0),
            max: Point::new(side, side),
        },
        long_link_min_mm: M as u64,
        heartbeat_ms,
        failure_timeout_ms: 3 * heartbeat_ms,
        join_timeout_ms: 2_000,
        query_timeout_ms: 10_000,
        hello_delay_ms: std::env::var("OVERLAY_HELLO_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(Config::default().hello_delay_ms),
        ..Config::default()
    }
}

/// VAST.js cluster model: max(1, ⌊1.5 ln N⌋) attractors, range √(area/k)/3.
struct Clusters {
    centres: Vec<Point>,
    range: f64,
}

impl Clusters {
    fn new(rng: &mut ChaCha8Rng, n: usize, side: i64) -> Self {
        let k = ((1.5 * (n as f64).ln()).floor() as usize).max(1);
        let centres = (0..k)
            .map(|_| Point::new(rng.random_range(0..=side), rng.random_range(0..=side)))
            .collect();
        let range = ((side as f64) * (side as f64) / k as f64).sqrt() / 3.0;
        Self { centres, range }
    }

    fn near(&self, rng: &mut ChaCha8Rng, side: i64) -> Point {
        let c = self.centres[rng.random_range(0..self.centres.len())];
        // Uniform in a disc of radius `range` (sqrt for uniform area).
        let r = self.range * rng.random::<f64>().sqrt();
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        Point::new(
            (c.x + (r * a.cos()) as i64).clamp(0, side),
            (c.y + (r * a.sin()) as i64).clamp(0, side),
        )
    }
}

fn place(rng: &mut ChaCha8Rng, n: usize, side: i64, how: Placement) -> Vec<Point> {
    let cl = Clusters::new(rng, n, side);
    (0..n)
        .map(|_| match how {
            Placement::Uniform => {
                Point::new(rng.random_range(0..=side), rng.random_range(0..=side))
            }
            Placement::Clustered => cl.near(rng, side),
        })
        .collect()
}

/// Join every point through a random joined peer, `per_step` joins per
/// 10 ms of simulated time.
fn build(net: &mut SimNet, cfg: &Config, pts: &[Point], seed: u64, per_step: usize) -> Vec<NodeId> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb111d);
    let mut ids = Vec::with_capacity(pts.len());
    for (i, &p) in pts.iter().enumerate() {
        let id = net.add(cfg.clone(), p, seed.wrapping_mul(31).wrapping_add(i as u64));
        if ids.is_empty() {
            net.start_alone(id);
        } else {
            let mut via = ids[rng.random_range(0..ids.len())];
            for _ in 0..8 {
                if net.peer(via).is_some_and(|p| p.is_joined()) {
                    break;
                }
                via = ids[rng.random_range(0..ids.len())];
            }
            net.join(id, via);
        }
        ids.push(id);
        if i % per_step == per_step - 1 {
            net.step(10);
        }
    }
    ids
}

fn settle(net: &mut SimNet, ms: u64) {
    let end = net.now + ms;
    while net.now < end {
        net.step(100);
    }
}

struct Quality {
    recall: f64,
    precision: f64,
    degree: f64,
    links: f64,
}

fn quality(net: &SimNet, truth: &BTreeMap<NodeId, BTreeSet<NodeId>>) -> Quality {
    let (mut hit, mut want, mut got, mut links) = (0usize, 0usize, 0usize, 0usize);
    for (id, w) in truth {
        if let Some(p) = net.peer(*id) {
            let g = p.voronoi_neighbours();
            hit += g.intersection(w).count();
            want += w.len();
            got += g.len();
            links += p.links().len();
        }
    }
    let n = truth.len().max(1) as f64;
    Quality {
        recall: hit as f64 / want.max(1) as f64,
        precision: hit as f64 / got.max(1) as f64,
        degree: got as f64 / n,
        links: links as f64 / n,
    }
}

/// Issue `q` locate queries from random joined peers to random points and
/// compare the answering owner with the oracle.
fn route(net: &mut SimNet, rng: &mut ChaCha8Rng, side: i64, q: usize) -> (usize, usize, Vec<u64>) {
    let sites = net.sites();
    let oracle = Oracle::new(&sites);
    let (mut ok, mut total) = (0, 0);
    let mut hops = Vec::with_capacity(q);
    let batch = 500;
    let mut left = q;
    while left > 0 {
        let b = left.min(batch);
        left -= b;
        let mut want: BTreeMap<(NodeId, u64), NodeId> = BTreeMap::new();
        for _ in 0..b {
            let from = sites[rng.random_range(0..sites.len())].0;
            let t = Point::new(rng.random_range(0..=side), rng.random_range(0..=side));
            if let Some(Ok(qid)) = net.with_peer(from, |p, now| p.locate(now, t))
                && let Some(o) = oracle.owner(t)
            {
                want.insert((from, qid), o);
            }
            total += 1;
        }
        net.drain(60_000);
        for (who, e) in net.take_events() {
            if let Event::Located {
                query,
                owner,
                hops: h,
                ..
            } = e
                && let Some(o) = want.get(&(who, query))
            {
                if *o == owner.id {
                    ok += 1;
                }
                hops.push(u64::from(h));
            }
        }
    }
    (ok, total, hops)
}

/// Long on purpose: one table of the report, its rows computed and printed in one loop.
fn static_runs(a: &Args) {
    println!("\n### Static routing and neighbour quality (exact 2-D mode)\n");
    println!(
        "| placement | N | build s | msgs/join | recall | precision | mean VN degree | oracle mean degree | hull sites h | 6 − (6+2h)/N | mean links | routed ok | mean hops | p99 hops | hops / ln²N |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &how in &a.placements {
        for &n in &a.sizes {
            let t0 = Instant::now();
            let side = side_mm(n, 40.0);
            // Failure detection is irrelevant when nobody fails: a slow
            // heartbeat keeps the 10^5 build affordable.
            let cfg = config(side, 50, 20_000);
            let mut rng = ChaCha8Rng::seed_from_u64(a.seed ^ n as u64);
            let pts = place(&mut rng, n, side, how);
            let mut net = SimNet::new(SimConfig::default(), a.seed);
            build(&mut net, &cfg, &pts, a.seed, 10);
            let build_msgs: u64 = (0..net.slots() as u64)
                .map(|i| net.traffic(NodeId(i)).msgs)
                .sum();
            settle(&mut net, 45_000);
            let oracle = Oracle::new(&net.sites());
            let truth = oracle.neighbours();
            let sites_n = oracle.len().max(1) as f64;
            let oracle_degree = truth.values().map(BTreeSet::len).sum::<usize>() as f64 / sites_n;
            let hull = oracle.hull_len();
            drop(oracle);
            if std::env::var_os("OVERLAY_SIM_TRACE").is_some() {
                eprintln!("kinds {:?}", net.kinds);
                let mut shown = 0;
                for (id, w) in &truth {
                    let p = net.peer(*id).expect("alive");
                    let g = p.voronoi_neighbours();
                    if g != w && shown < 5 {
                        shown += 1;
                        let missing: Vec<_> = w
                            .difference(g)
                            .map(|m| {
                                (
                                    m,
                                    p.contact(*m).is_some(),
                                    net.peer(*m).map(|q| q.voronoi_neighbours().contains(id)),
                                )
                            })
                            .collect();
                        let extra: Vec<_> = g
                            .difference(w)
                            .map(|e| {
                                (
                                    e,
                                    p.contact(*e).map(|c| c.pos),
                                    net.peer(*e).map(|q| q.me().pos),
                                )
                            })
                            .collect();
                        eprintln!(
                            "peer {id} at {:?} joined {}: missing {missing:?} extra {extra:?} links {}",
                            p.me().pos,
                            p.is_joined(),
                            p.links().len()
                        );
                    }
                }
            }
            let qu = quality(&net, &truth);
            let (ok, total, mut hops) = route(&mut net, &mut rng, side, a.queries);
            let mean = hops.iter().sum::<u64>() as f64 / hops.len().max(1) as f64;
            let p99 = percentile(&mut hops, 0.99);
            println!(
                "| {:?} | {} | {:.0} | {:.1} | {:.5} | {:.5} | {:.3} | {:.3} | {} | {:.3} | {:.1} | {}/{} ({:.3}%) | {:.2} | {} | {:.3} |",
                how,
                n,
                t0.elapsed().as_secs_f64(),
                build_msgs as f64 / n as f64,
                qu.recall,
                qu.precision,
                qu.degree,
                oracle_degree,
                hull,
                6.0 - (6.0 + 2.0 * hull as f64) / sites_n,
                qu.links,
                ok,
                total,
                100.0 * ok as f64 / total.max(1) as f64,
                mean,
                p99,
                mean / ln2(n)
            );
        }
    }
}

/// Per-peer recovery tracking: steps from the onset of an inconsistency
/// until the peer is consistent again (VAST's RS).
#[derive(Default)]
struct Recovery {
    since: BTreeMap<NodeId, u64>,
    done: Vec<u64>,
}

impl Recovery {
    fn observe(&mut self, step: u64, id: NodeId, consistent: bool) {
        match (consistent, self.since.get(&id).copied()) {
            (false, None) => {
                self.since.insert(id, step);
            }
            (true, Some(s)) => {
                self.since.remove(&id);
                self.done.push(step - s);
            }
            _ => {}
        }
    }
    fn forget_dead(&mut self, alive: &BTreeSet<NodeId>) {
        self.since.retain(|id, _| alive.contains(id));
    }
}

/// The owner of `t` among the sites live at `x` ms, if `answerer` is one
/// of the owners an instant before or after `x` (a join or a crash at `x`
/// itself may come before or after the decision).
fn owner_at(
    net: &SimNet,
    pos: &BTreeMap<NodeId, Point>,
    killed: &BTreeMap<NodeId, u64>,
    x: u64,
    t: Point,
    answerer: NodeId,
) -> bool {
    let mut any = false;
    for (join_incl, kill_incl) in [(true, false), (true, true), (false, true), (false, false)] {
        let sites: Vec<(NodeId, Point)> = pos
            .iter()
            .filter(|(id, _)| {
                net.joined_at(**id)
                    .is_some_and(|j| j < x || (join_incl && j == x))
            })
            .filter(|(id, _)| {
                killed
                    .get(id)
                    .is_none_or(|k| *k > x || (kill_incl && *k == x))
            })
            .map(|(id, p)| (*id, *p))
            .collect();
        any |= Oracle::new(&sites).owner(t) == Some(answerer);
    }
    any
}

/// Long on purpose: one table of the report, its rows computed and printed in one loop.
fn churn_runs(a: &Args) {
    println!("\n### Churn: 1 %/s of peers crash and as many join (uniform, 60 s)\n");
    println!(
        "| N | queries | origin crashed first | answered (of the rest) | exact owner when it answered | exact owner when the reply arrived | VN consistent at end (after 10 s quiet) | mean RS (steps of 100 ms) | p99 RS | max RS | still inconsistent | msgs/peer/s | bytes/peer/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let trace = std::env::var_os("OVERLAY_SIM_TRACE").is_some();
    for &n in &a.churn {
        let side = side_mm(n, 40.0);
        let cfg = config(side, 50, 1_000);
        let mut rng = ChaCha8Rng::seed_from_u64(a.seed ^ 0xc4u64 ^ n as u64);
        let pts = place(&mut rng, n, side, Placement::Uniform);
        let mut net = SimNet::new(
            SimConfig {
                count_bytes: true,
                ..SimConfig::default()
            },
            a.seed,
        );
        let ids = build(&mut net, &cfg, &pts, a.seed, 10);
        settle(&mut net, 10_000);
        let total = |net: &SimNet| {
            (0..net.slots() as u64)
                .map(|i| net.traffic(NodeId(i)))
                .fold((0u64, 0u64), |s, t| (s.0 + t.msgs, s.1 + t.bytes))
        };
        let before = total(&net);
        let mut during = before;
        let mut pos: BTreeMap<NodeId, Point> =
            ids.iter().copied().zip(pts.iter().copied()).collect();
        let mut killed: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut rec = Recovery::default();
        let (mut asked, mut answered, mut exact_then, mut exact_arrival) = (0usize, 0, 0, 0);
        let mut want: BTreeMap<(NodeId, u64), Point> = BTreeMap::new();
        let steps = 600u64;
        let per_sec = (n / 100).max(1);
        let mut step = 0u64;
        let total_steps = steps + 100;
        while step < total_steps {
            let churning = step < steps;
            if churning && step.is_multiple_of(10) {
                for _ in 0..per_sec {
                    let alive = net.sites();
                    if alive.len() > 3 {
                        let victim = alive[rng.random_range(0..alive.len())].0;
                        net.kill(victim);
                        killed.insert(victim, net.now);
                    }
                    let p = Point::new(rng.random_range(0..=side), rng.random_range(0..=side));
                    let id = net.add(cfg.clone(), p, rng.random());
                    pos.insert(id, p);
                    let alive = net.sites();
                    let via = alive[rng.random_range(0..alive.len())].0;
                    net.join(id, via);
                }
            }
            if churning {
                let sites = net.sites();
                for _ in 0..20 {
                    let from = sites[rng.random_range(0..sites.len())].0;
                    let t = Point::new(rng.random_range(0..=side), rng.random_range(0..=side));
                    if let Some(Ok(q)) = net.with_peer(from, |p, now| p.locate(now, t)) {
                        want.insert((from, q), t);
                        asked += 1;
                    }
                }
            }
            net.step(100);
            step += 1;
            if step == steps {
                during = total(&net);
            }
            let sites = net.sites();
            let oracle = Oracle::new(&sites);
            for (who, e) in net.take_events() {
                let Event::Located { query, owner, .. } = e else {
                    continue;
                };
                let Some(t) = want.remove(&(who, query)) else {
                    continue;
                };
                answered += 1;
                let decided = net.take_answered_at(who, query);
                if oracle.owner(t) == Some(owner.id) {
                    exact_arrival += 1;
                    exact_then += 1;
                    continue;
                }
                let Some((x, by)) = decided else { continue };
                if by == owner.id && owner_at(&net, &pos, &killed, x, t, owner.id) {
                    exact_then += 1;
                } else if trace {
                    let sites: Vec<(NodeId, Point)> = pos
                        .iter()
                        .filter(|(id, _)| net.joined_at(**id).is_some_and(|j| j <= x))
                        .filter(|(id, _)| killed.get(id).is_none_or(|k| *k > x))
                        .map(|(id, p)| (*id, *p))
                        .collect();
                    let o = Oracle::new(&sites).owner(t).unwrap_or(NodeId(0));
                    eprintln!(
                        "MISS at {x} ms: {} answered for {t:?} (alive {}, owns now {:?}); owner then {o} joined at {:?} killed {:?}, answerer knows it now {:?}, owner knows answerer {:?} answerer joined {:?}",
                        owner.id,
                        net.peer(owner.id).is_some(),
                        net.peer(owner.id).map(|p| p.owns(t)),
                        net.joined_at(o),
                        killed.get(&o),
                        net.peer(owner.id).map(|p| p.contact(o).is_some()),
                        net.peer(o).map(|p| p.contact(owner.id).is_some()),
                        net.joined_at(owner.id),
                    );
                }
            }
            let truth = oracle.neighbours();
            let alive: BTreeSet<NodeId> = truth.keys().copied().collect();
            rec.forget_dead(&alive);
            for (id, w) in &truth {
                let ok = net.peer(*id).is_some_and(|p| p.voronoi_neighbours() == w);
                rec.observe(step, *id, ok);
            }
        }
        // Queries still open: every one whose origin crashed is lost with
        // it (nobody is left to hear the answer); the others failed.
        let orphaned = want
            .keys()
            .filter(|(who, _)| net.peer(*who).is_none())
            .count();
        if trace {
            eprintln!("lost {:?}", net.lost);
            for ((who, _), t) in &want {
                eprintln!(
                    "LOST from {who} alive {} target {t:?}",
                    net.peer(*who).is_some()
                );
            }
        }
        let live = (asked - orphaned).max(1) as f64;
        let truth = Oracle::new(&net.sites()).neighbours();
        let consistent = truth
            .iter()
            .filter(|(id, w)| net.peer(**id).is_some_and(|p| p.voronoi_neighbours() == *w))
            .count();
        let mean = rec.done.iter().sum::<u64>() as f64 / rec.done.len().max(1) as f64;
        let max = rec.done.iter().copied().max().unwrap_or(0);
        let p99 = percentile(&mut rec.done, 0.99);
        println!(
            "| {} | {} | {} | {:.3}% | {:.3}% | {:.3}% | {:.3}% | {:.2} | {} | {} | {} | {:.1} | {:.0} |",
            n,
            asked,
            orphaned,
            100.0 * answered as f64 / live,
            100.0 * exact_then as f64 / live,
            100.0 * exact_arrival as f64 / live,
            100.0 * consistent as f64 / truth.len().max(1) as f64,
            mean,
            p99,
            max,
            rec.since.len(),
            (during.0 - before.0) as f64 / n as f64 / (steps as f64 / 10.0),
            (during.1 - before.1) as f64 / n as f64 / (steps as f64 / 10.0),
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Model {
    Waypoint,
    Cluster,
}

/// Spatial hash for AOI ground truth.
fn grid(sites: &[(NodeId, Point)], cell: i64) -> BTreeMap<(i64, i64), Vec<(NodeId, Point)>> {
    let mut g: BTreeMap<(i64, i64), Vec<(NodeId, Point)>> = BTreeMap::new();
    for &(id, p) in sites {
        g.entry((p.x.div_euclid(cell), p.y.div_euclid(cell)))
            .or_default()
            .push((id, p));
    }
    g
}

/// Long on purpose: one table of the report, its rows computed and printed in one loop.
fn moving_runs(a: &Args) {
    println!(
        "\n### Moving peers (VAST setting: AOI 100 m, 5 m/step, 10 steps/s, density of 1000 peers on 1200 m × 1200 m)\n"
    );
    println!(
        "| model | N | TC while moving (mean) | TC min | TC after 5 s quiet | drift mean mm | drift max mm | mean RS | max RS | VN recall at end | msgs/peer/s | bytes/peer/s | interior msgs/peer/s | interior bytes/peer/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &model in &a.models {
        for &n in &a.moving {
            let side = (1200.0 * (n as f64 / 1000.0).sqrt() * M as f64) as i64;
            let aoi = 100 * M;
            let cfg = config(side, 100, 1_000);
            let mut rng = ChaCha8Rng::seed_from_u64(a.seed ^ 0x30u64 ^ n as u64);
            let cl = Clusters::new(&mut rng, n, side);
            let how = match model {
                Model::Waypoint => Placement::Uniform,
                Model::Cluster => Placement::Clustered,
            };
            let pts = place(&mut rng, n, side, how);
            let mut net = SimNet::new(
                SimConfig {
                    count_bytes: true,
                    ..SimConfig::default()
                },
                a.seed,
            );
            let ids = build(&mut net, &cfg, &pts, a.seed, 10);
            settle(&mut net, 10_000);
            let mut pos: Vec<Point> = ids
                .iter()
                .map(|id| net.peer(*id).map_or(Point::default(), |p| p.me().pos))
                .collect();
            let mut goal: Vec<Point> = pos.clone();
            let speed = 5.0 * M as f64;
            let moving_steps = a.moving_steps;
            let quiet_steps = 50u64;
            let before: (u64, u64) = (0..net.slots() as u64)
                .map(|i| net.traffic(NodeId(i)))
                .fold((0, 0), |s, t| (s.0 + t.msgs, s.1 + t.bytes));
            let mut rec = Recovery::default();
            let (mut tc_sum, mut tc_min, mut tc_last) = (0.0f64, 1.0f64, 0.0f64);
            let (mut drift_sum, mut drift_n, mut drift_max) = (0f64, 0u64, 0i64);
            let mut traffic_after_moving = before;
            // Traffic of peers at least AOI + buffer from every border (no
            // edge effect), attributed step by step.
            let margin = aoi + 15 * M;
            let mut last: Vec<(u64, u64)> = ids
                .iter()
                .map(|id| (net.traffic(*id).msgs, net.traffic(*id).bytes))
                .collect();
            let (mut in_msgs, mut in_bytes, mut in_steps) = (0u64, 0u64, 0u64);
            for step in 0..moving_steps + quiet_steps {
                let moving = step < moving_steps;
                if moving {
                    for (i, id) in ids.iter().enumerate() {
                        let (p, g) = (pos[i], goal[i]);
                        let (dx, dy) = ((g.x - p.x) as f64, (g.y - p.y) as f64);
                        let d = (dx * dx + dy * dy).sqrt();
                        let np = if d <= speed {
                            // Arrived: pick a new goal.
                            goal[i] = match model {
                                Model::Waypoint => Point::new(
                                    rng.random_range(0..=side),
                                    rng.random_range(0..=side),
                                ),
                                Model::Cluster => {
                                    if rng.random::<f64>() < 0.2 {
                                        cl.near(&mut rng, side)
                                    } else {
                                        let r = cl.range * rng.random::<f64>().sqrt();
                                        let a2 = rng.random::<f64>() * std::f64::consts::TAU;
                                        Point::new(
                                            (g.x + (r * a2.cos()) as i64).clamp(0, side),
                                            (g.y + (r * a2.sin()) as i64).clamp(0, side),
                                        )
                                    }
                                }
                            };
                            g
                        } else {
                            Point::new(p.x + (dx / d * speed) as i64, p.y + (dy / d * speed) as i64)
                        };
                        pos[i] = np;
                        net.move_to(*id, np);
                    }
                }
                net.step(100);
                if std::env::var_os("OVERLAY_SIM_TRACE").is_some() {
                    eprintln!(
                        "step {step} delivered {} in flight {} {:?}",
                        net.delivered,
                        net.in_flight(),
                        net.kinds
                    );
                }
                if moving {
                    for (i, id) in ids.iter().enumerate() {
                        let t = net.traffic(*id);
                        let p = pos[i];
                        if p.x >= margin
                            && p.y >= margin
                            && p.x <= side - margin
                            && p.y <= side - margin
                        {
                            in_msgs += t.msgs - last[i].0;
                            in_bytes += t.bytes - last[i].1;
                            in_steps += 1;
                        }
                        last[i] = (t.msgs, t.bytes);
                    }
                }
                if step + 1 == moving_steps {
                    traffic_after_moving = (0..net.slots() as u64)
                        .map(|i| net.traffic(NodeId(i)))
                        .fold((0, 0), |s, t| (s.0 + t.msgs, s.1 + t.bytes));
                }
                // Topology consistency (VAST): Σ known AOI neighbours / Σ actual.
                let sites = net.sites();
                let g = grid(&sites, aoi);
                let (mut vis, mut act) = (0u64, 0u64);
                for &(id, p) in &sites {
                    let Some(peer) = net.peer(id) else { continue };
                    let (cx, cy) = (p.x.div_euclid(aoi), p.y.div_euclid(aoi));
                    let mut all = true;
                    for gx in cx - 1..=cx + 1 {
                        for gy in cy - 1..=cy + 1 {
                            for &(q, qp) in g.get(&(gx, gy)).map_or(&[][..], |v| &v[..]) {
                                if q == id || qp.dist2(p) > (aoi as u128) * (aoi as u128) {
                                    continue;
                                }
                                act += 1;
                                if let Some(c) = peer.contact(q) {
                                    vis += 1;
                                    let dd = c.pos.dist2(qp);
                                    let d = (dd as f64).sqrt() as i64;
                                    drift_sum += d as f64;
                                    drift_n += 1;
                                    drift_max = drift_max.max(d);
                                } else {
                                    all = false;
                                }
                            }
                        }
                    }
                    rec.observe(step, id, all);
                }
                let tc = if act == 0 {
                    1.0
                } else {
                    vis as f64 / act as f64
                };
                if moving {
                    tc_sum += tc;
                    tc_min = tc_min.min(tc);
                }
                tc_last = tc;
            }
            let truth = Oracle::new(&net.sites()).neighbours();
            if std::env::var_os("OVERLAY_SIM_TRACE").is_some() {
                for (id, w) in truth.iter().take(400) {
                    let p = net.peer(*id).expect("alive");
                    let g = p.voronoi_neighbours();
                    if g != w {
                        let missing: Vec<_> = w
                            .difference(g)
                            .map(|m| {
                                (
                                    m,
                                    p.contact(*m).map(|c| c.pos),
                                    net.peer(*m).map(|q| q.me().pos),
                                    net.peer(*m).map(|q| q.voronoi_neighbours().contains(id)),
                                )
                            })
                            .collect();
                        let extra: Vec<_> = g.difference(w).collect();
                        eprintln!(
                            "peer {id} at {:?}: missing {missing:?} extra {extra:?}",
                            p.me().pos
                        );
                    }
                }
            }
            let qu = quality(&net, &truth);
            let secs = moving_steps as f64 / 10.0;
            let msgs = (traffic_after_moving.0 - before.0) as f64 / n as f64 / secs;
            let bytes = (traffic_after_moving.1 - before.1) as f64 / n as f64 / secs;
            let mean_rs = rec.done.iter().sum::<u64>() as f64 / rec.done.len().max(1) as f64;
            let max_rs = rec.done.iter().copied().max().unwrap_or(0);
            println!(
                "| {:?} | {} | {:.4}% | {:.4}% | {:.4}% | {:.0} | {} | {:.2} | {} | {:.5} | {:.0} | {:.0} | {:.0} | {:.0} |",
                model,
                n,
                100.0 * tc_sum / moving_steps as f64,
                100.0 * tc_min,
                100.0 * tc_last,
                drift_sum / drift_n.max(1) as f64,
                drift_max,
                mean_rs,
                max_rs,
                qu.recall,
                msgs,
                bytes,
                in_msgs as f64 * 10.0 / in_steps.max(1) as f64,
                in_bytes as f64 * 10.0 / in_steps.max(1) as f64,
            );
        }
    }
}

fn main() -> Result<()> {
    let a = args()?;
    println!(
        "overlay_sim seed {} (reproduce with --seed {})",
        a.seed, a.seed
    );
    let t0 = Instant::now();
    if !a.sizes.is_empty() {
        static_runs(&a);
    }
    if !a.churn.is_empty() {
        churn_runs(&a);
    }
    if !a.moving.is_empty() {
        moving_runs(&a);
    }
    println!("\nwall time {:.0} s", t0.elapsed().as_secs_f64());
    Ok(())
}
