//! The two-group harness: two regions side by side, each hosted by its
//! own group of replica cores (`metatopia_node::replica::Replica`), trading
//! border traffic (ghosts, hand-off offers, accepts, finals, aborts,
//! influences) as certified border sets, over a simulated clock and
//! network, everything drawn from one `u64` seed.
//!
//! Region 1 is `[0, 64) × [0, 64)` and region 2 `[64, 128) × [0, 64)`
//! (the `border-storm` scene's layout: walls at x = 51.5 and x = 76.5 and
//! elastic balls flying along x at 8 m/s across the border at x = 64,
//! both ways). Each group orders its own region's batches with the same
//! idealised engine as `replication.rs` (a view's leader proposes, 2f + 1
//! valid votes notarize and finalize, a timeout nullifies). Members of a
//! group talk over a quiet LAN; the link between the groups has the
//! faults of [`LinkFaults`] (delay, loss, duplication, reorder from the
//! delay spread, partitions that heal). One group's primary may crash in
//! the middle of the storm and restart from its log.
//!
//! [`talk`] runs the other scene of issue 13: the driver's avatar walks
//! to the border in region 1 and chats there, within earshot of its avatar
//! and a journal script in region 2, and a relay script in region 1 sends
//! every line it hears to that journal (`send(target, text, 2)`): both
//! cross as numbered, acknowledged items of the certified border sets
//! (docs/adr/0016), and each must arrive exactly once, link faults or not.
//!
//! Checks after every tick both groups have finalized:
//! - every replica of a group committed the same region hash;
//! - every body is owned (in its region's sim state) by exactly one of the
//!   two regions, or held by the source in an unsettled hand-off (see
//!   [`Outcome::in_limbo`]), never by both;
//! - every change of owner is the switch of an offer made two ticks
//!   before (hand-off latency), unless a hand-off was aborted.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use metatopia_node::replica::SourceBook;
use metatopia_node::replica::core::{Output, To};
use metatopia_node::replica::wire::player_of;
use metatopia_node::replica::{
    Answer, Config, Digest, Manifest, MemSources, Message, Neighbour, Order, Proposal, Replica,
    SignedInput,
};
use metatopia_physics::Region;
use metatopia_physics::cluster::Cluster;
use metatopia_physics::scene::{ball, bouncy, settings, wall};
use metatopia_sim::input::InputKind;
use metatopia_sim::physics::BorderMessage;
use metatopia_sim::testing::{Rule, RuleHost};
use metatopia_sim::{ElementId, Fx, RegionId, Vec3};

/// Faults on the link between the two groups (before `heal_at_ms`).
#[derive(Debug, Clone)]
pub struct LinkFaults {
    /// Probability a message is lost.
    pub loss: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// One-way delay, milliseconds (uniform; the spread reorders).
    pub delay_ms: (u64, u64),
    /// Cut the link for a while, now and then.
    pub partitions: bool,
    /// Crash the primary of group 2 once, in the middle.
    pub crash_primary: bool,
    /// Faults stop at this time (simulated ms since the start).
    pub heal_at_ms: u64,
}

impl LinkFaults {
    /// A quiet link: LAN delays, nothing lost.
    pub fn quiet() -> LinkFaults {
        LinkFaults {
            loss: 0.0,
            duplicate: 0.0,
            delay_ms: (2, 10),
            partitions: false,
            crash_primary: false,
            heal_at_ms: 0,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Ticks both groups finalized and the harness checked.
    pub ticks_checked: u64,
    /// Changes of owner seen (hand-offs, including take-backs).
    pub switches: u64,
    /// Of those, switches exactly two ticks after their offer.
    pub switches_at_2: u64,
    /// Hand-off latency (offer to switch, ticks) → count.
    pub latency: BTreeMap<u64, u64>,
    /// Body-ticks a body was in no region's sim state (held by its
    /// source in a hand-off whose final data or acceptance went missing,
    /// until the abort repairs it).
    pub in_limbo: u64,
    /// Body-ticks a body was in both regions' sim states.
    pub doubled: u64,
    /// Bodies lost for good (in neither region at the end).
    pub lost: u64,
    /// Certified border sets carried by finalized proposals.
    pub sets_included: u64,
    /// Border sets that came too late (after their tick was finalized, or
    /// after the primary proposed without them).
    pub sets_late: u64,
    /// Bytes of `Message::Border` sent between the groups (all copies).
    pub border_wire_bytes: u64,
    /// Bytes of certified sets carried in finalized proposals.
    pub border_cert_bytes: u64,
    /// Body-ticks of bodies within 2 m of the border.
    pub near_border_body_ticks: u64,
    /// Highest tick finalized by both groups.
    pub finalized_tick: u64,
}

struct Node {
    key: SigningKey,
    core: Option<Replica>,
    log: BTreeMap<u64, Arc<Proposal>>,
    down_until: u64,
}

struct View {
    leader: usize,
    started: u64,
    digest: Option<Digest>,
    asked: BTreeSet<usize>,
    valid: BTreeSet<usize>,
}

struct Group {
    manifest: Manifest,
    /// The scripts' host (rules by source hash) and the sources' texts
    /// (the rules' names) every member's book holds.
    host: Arc<RuleHost>,
    sources: Vec<String>,
    cfg: Config,
    genesis: Vec<u8>,
    nodes: Vec<Node>,
    view: u64,
    tip: Digest,
    pending: Option<View>,
    nullified: u64,
    /// Per tick: the region hash every replica must commit.
    hash_at: BTreeMap<u64, Digest>,
    /// Per tick: the bodies the region owns after it, and how many are
    /// within 2 m of the border.
    bodies_at: BTreeMap<u64, (BTreeSet<ElementId>, u64)>,
    /// Finalized proposals by tick (one replica's log is enough: they
    /// agree, checked).
    finalized: BTreeMap<u64, Arc<Proposal>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: u64,
    seq: u64,
    to: (usize, usize),
    from: (usize, usize),
    bytes: Vec<u8>,
}

/// The harness.
pub struct Harness {
    seed: u64,
    rng: ChaCha8Rng,
    start: u64,
    now: u64,
    groups: Vec<Group>,
    driver: SigningKey,
    seq: u64,
    net: BinaryHeap<Reverse<Flight>>,
    net_seq: u64,
    link: LinkFaults,
    cut_until: u64,
    crashed: bool,
    checked_to: u64,
    offers: BTreeMap<(ElementId, u64), (usize, u64)>,
    out: Outcome,
    bodies: u32,
    spawned: bool,
    /// The talk scene, when running it: lines to say.
    talk: Option<u32>,
    /// The crossing scene, when running it: lines to say from region 2,
    /// and how many were said.
    cross: Option<(u32, u32)>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

fn mm(x: i64, y: i64, z: i64) -> Vec3 {
    Vec3::new(Fx::from_milli(x), Fx::from_milli(y), Fx::from_milli(z))
}

const N: usize = 4;
const TICK_MS: u64 = 50;

impl Harness {
    /// Two groups of four, `bodies` balls in the storm, link faults as
    /// given (times relative to the start).
    pub fn new(seed: u64, bodies: u32, mut link: LinkFaults) -> Harness {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let start = 1_000_000;
        link.heal_at_ms += start;
        let driver = SigningKey::from_bytes(&rng.random());
        let keys: Vec<Vec<SigningKey>> = (0..2)
            .map(|_| {
                (0..N)
                    .map(|_| SigningKey::from_bytes(&rng.random()))
                    .collect()
            })
            .collect();
        // The storm's two regions, zero gravity.
        let cluster = Cluster::grid(2, 1, 64, 256, &settings(), &[player_of(&driver)], |c| {
            c.space.gravity = Vec3::ZERO;
        });
        let manifests: Vec<Manifest> = (0..2)
            .map(|g| Manifest {
                region: RegionId(g as u32 + 1),
                settings: settings(),
                founders: vec![player_of(&driver)],
                members: keys[g].iter().map(player_of).collect(),
            })
            .collect();
        let mut groups = Vec::new();
        for (g, ks) in keys.into_iter().enumerate() {
            let manifest = manifests[g].clone();
            let other = &manifests[1 - g];
            let cfg = Config {
                checkpoint_every: 10,
                rollback_every: 10,
                neighbours: vec![Neighbour::of(other)],
                epoch_ms: Some(start + 200),
                tick_ms: TICK_MS,
                ..Config::default()
            };
            let genesis = cluster
                .region(manifest.region)
                .expect("the grid has both regions")
                .snapshot();
            let tip = manifest.genesis_digest();
            let (host, sources) = talk_host();
            let mut group = Group {
                manifest,
                host: Arc::new(host),
                sources,
                cfg,
                genesis,
                nodes: Vec::new(),
                view: 0,
                tip,
                pending: None,
                nullified: 0,
                hash_at: BTreeMap::new(),
                bodies_at: BTreeMap::new(),
                finalized: BTreeMap::new(),
            };
            for key in ks {
                let mut node = Node {
                    key,
                    core: None,
                    log: BTreeMap::new(),
                    down_until: 0,
                };
                node.core = Some(boot(&group, &node));
                group.nodes.push(node);
            }
            groups.push(group);
        }
        Harness {
            seed,
            rng,
            start,
            now: start,
            groups,
            driver,
            seq: 0,
            net: BinaryHeap::new(),
            net_seq: 0,
            link,
            cut_until: 0,
            crashed: false,
            checked_to: 0,
            offers: BTreeMap::new(),
            out: Outcome {
                seed,
                ..Outcome::default()
            },
            bodies,
            spawned: false,
            talk: None,
            cross: None,
        }
    }

    fn submit(&mut self, g: usize, kind: InputKind) {
        self.seq += 1;
        let region = self.groups[g].manifest.region;
        let input = SignedInput::sign(&self.driver, region, self.seq, kind);
        // To every member: whoever leads orders it.
        for i in 0..N {
            let now = self.now;
            if let Some(core) = self.groups[g].nodes[i].core.as_mut() {
                let _ = core.submit(input.clone());
                let _ = now;
            }
        }
    }

    /// The storm: walls and balls, each spawned by the region that holds
    /// its position (region-local coordinates).
    fn spawn_storm(&mut self) {
        let lanes = f64::from(self.bodies).sqrt().ceil() as i64;
        let extent = 2_000 + lanes * 1_500;
        let half = mm(500, extent / 2 + 1_000, extent / 2 + 1_000);
        let wall_at = |h: &mut Harness, x: i64| {
            let g = usize::from(x >= 64_000);
            let local = x - if g == 1 { 64_000 } else { 0 };
            h.submit(
                g,
                InputKind::SpawnBody {
                    parent: None,
                    name: "wall".into(),
                    pos: mm(local, extent / 2, extent / 2),
                    body: wall(half),
                    vel: Vec3::ZERO,
                },
            );
        };
        wall_at(self, 51_500);
        wall_at(self, 76_500);
        let mut count = 0;
        'outer: for j in 0..lanes {
            for k in 0..lanes {
                if count == self.bodies {
                    break 'outer;
                }
                let x: i64 = self.rng.random_range(53_000..75_000);
                let dir = if self.rng.random_bool(0.5) {
                    8_000
                } else {
                    -8_000
                };
                // Not within the hysteresis of the border at the start.
                let x = if (63_000..65_000).contains(&x) {
                    x - 2_000
                } else {
                    x
                };
                let g = usize::from(x >= 64_000);
                let local = x - if g == 1 { 64_000 } else { 0 };
                let mut spec = ball(250);
                spec.material = bouncy();
                self.submit(
                    g,
                    InputKind::SpawnBody {
                        parent: None,
                        name: "ball".into(),
                        pos: mm(local, 2_000 + j * 1_500, 2_000 + k * 1_500),
                        body: spec,
                        vel: mm(dir, 0, 0),
                    },
                );
                count += 1;
            }
        }
    }

    /// The talk scene's inputs at `since` ms: objects and the avatars'
    /// places at 400 ms, scripts at 700, the walk to the border from 800
    /// (1 m a step), then a line every 100 ms from 1,000.
    fn talk_step(&mut self, since: u64, lines: u32) {
        let (r1, r2) = (0, 1);
        match since {
            400 => {
                self.submit(r2, create("inbox", 3_000));
                self.submit(r1, create("relay", 60_000));
                self.submit(r2, walk(ElementId::new(2, 1), 2_000));
                self.submit(r1, walk(ElementId::new(1, 1), 55_000));
            }
            700 => {
                self.submit(r2, attach(TALK_INBOX, "journal"));
                self.submit(r1, attach(TALK_RELAY, "relay"));
            }
            800..=1_400 if since.is_multiple_of(100) => {
                let x = 56_000 + (since as i64 - 800) / 100 * 1_000;
                self.submit(r1, walk(ElementId::new(1, 1), x));
            }
            _ => {}
        }
        if since >= 1_500 && since.is_multiple_of(100) && (since - 1_500) / 100 < u64::from(lines) {
            let i = (since - 1_500) / 100;
            self.submit(
                r1,
                InputKind::Say {
                    text: format!("n{i}"),
                    radius: Some(Fx::from_int(10)),
                },
            );
        }
    }

    /// The crossing scene's inputs at `since` ms: a journal in region 1
    /// 4 m from the border, a charm (a journal too) on the driver's
    /// avatar, a relay in region 2 sending what it hears to region 1's
    /// journal; the driver leaves region 2 at 750 (its relay stays), and
    /// from 800 walks its region 1 avatar 1 m every 100 ms to world
    /// x = 68, sending each step to the region its avatar is in as the
    /// head of that region's first live replica shows it (a client
    /// following its avatar); once there, a line every 100 ms.
    fn cross_step(&mut self, since: u64) {
        let (r1, r2) = (0, 1);
        match since {
            400 => {
                self.submit(r1, create("journal", 60_000));
                self.submit(r1, walk(CROSS_AVATAR, 55_000));
                self.submit(r2, create("relay", 3_000));
            }
            500 => self.submit(
                r1,
                InputKind::Create {
                    parent: Some(CROSS_AVATAR),
                    name: "charm".into(),
                    pos: mm(55_000, 11_000, 0),
                },
            ),
            700 => {
                self.submit(r1, attach(CROSS_JOURNAL, "journal"));
                self.submit(r1, attach(CROSS_CHARM, "journal"));
                self.submit(r2, attach(CROSS_RELAY, "relay-back"));
            }
            750 => self.submit(r2, InputKind::Leave),
            _ => {}
        }
        if since < 800 || !since.is_multiple_of(100) {
            return;
        }
        let driver = player_of(&self.driver);
        let at = |h: &Harness, g: usize| -> Option<Fx> {
            let core = h.groups[g].nodes.iter().find_map(|n| n.core.as_ref())?;
            let state = core.head().sim().state();
            let p = state.players.get(&driver).filter(|p| p.online)?;
            let avatar = state.elements.get(&p.avatar?)?;
            let origin = Fx::from_int(if g == 1 { 64 } else { 0 });
            Some(avatar.pos.x.saturating_add(origin))
        };
        let goal = Fx::from_int(68);
        let step = |x: Fx| x.saturating_add(Fx::from_int(1)).min(goal);
        if let Some(x) = at(self, r1) {
            self.submit(r1, walk(CROSS_AVATAR, step(x).to_milli()));
        } else if let Some(x) = at(self, r2) {
            if x < goal {
                let local = step(x).saturating_sub(Fx::from_int(64));
                self.submit(r2, walk(CROSS_AVATAR, local.to_milli()));
            } else if let Some((lines, said)) = self.cross
                && said < lines
            {
                self.cross = Some((lines, said + 1));
                self.submit(
                    r2,
                    InputKind::Say {
                        text: format!("c{said}"),
                        radius: Some(Fx::from_int(10)),
                    },
                );
            }
        }
    }

    fn link_faulty(&self) -> bool {
        self.now < self.link.heal_at_ms
    }

    fn send(&mut self, from: (usize, usize), to: (usize, usize), msg: &Message) {
        if from == to {
            return;
        }
        let between = from.0 != to.0;
        let bytes = msg.encode();
        let mut copies = 1;
        let (lo, hi) = if between {
            self.out.border_wire_bytes += bytes.len() as u64;
            if self.now < self.cut_until {
                return;
            }
            if self.link_faulty() {
                if self.rng.random_bool(self.link.loss) {
                    return;
                }
                if self.rng.random_bool(self.link.duplicate) {
                    copies = 2;
                }
            }
            self.link.delay_ms
        } else {
            (2, 10)
        };
        for _ in 0..copies {
            let at = self.now + self.rng.random_range(lo..=hi.max(lo));
            self.net_seq += 1;
            self.net.push(Reverse(Flight {
                at,
                seq: self.net_seq,
                to,
                from,
                bytes: bytes.clone(),
            }));
        }
    }

    fn drain(&mut self, g: usize, i: usize) -> Result<(), String> {
        loop {
            let Some(core) = self.groups[g].nodes[i].core.as_mut() else {
                return Ok(());
            };
            let Some(out) = core.poll_output() else {
                return Ok(());
            };
            match out {
                Output::Answer(a) => self.answer(g, i, a),
                Output::Send { to, msg } => match to {
                    To::All => {
                        for j in 0..N {
                            self.send((g, i), (g, j), &msg);
                        }
                    }
                    To::One(p) => {
                        if let Some(j) = self.groups[g].manifest.index_of(p) {
                            self.send((g, i), (g, j), &msg);
                        }
                    }
                    To::Region(r) => {
                        let h = usize::from(r == RegionId(2));
                        for j in 0..N {
                            self.send((g, i), (h, j), &msg);
                        }
                    }
                    To::Some(_) => {}
                },
                Output::Visible(p) => {
                    let near = near_border(g, &p.sim);
                    let mut bodies: BTreeSet<ElementId> =
                        p.sim.state().bodies.iter().map(|(id, _)| *id).collect();
                    // The crossing scene audits the avatar like a body.
                    if self.cross.is_some() && p.sim.state().elements.contains_key(&CROSS_AVATAR) {
                        bodies.insert(CROSS_AVATAR);
                    }
                    let group = &mut self.groups[g];
                    match group.bodies_at.get(&p.tick) {
                        Some((b, _)) if *b != bodies => {
                            return Err(format!(
                                "group {g} replica {i} shows other bodies at tick {}",
                                p.tick
                            ));
                        }
                        Some(_) => {}
                        None => {
                            if p.tick >= self.checked_to {
                                group.bodies_at.insert(p.tick, (bodies, near));
                            }
                        }
                    }
                }
                Output::Commit(c) => {
                    let tick = c.proposal.tick;
                    let group = &mut self.groups[g];
                    match group.hash_at.get(&tick) {
                        Some(h) if *h != c.hash => {
                            return Err(format!(
                                "group {g} replica {i} committed tick {tick} with another hash"
                            ));
                        }
                        Some(_) => {}
                        None => {
                            group.hash_at.insert(tick, c.hash);
                            group.finalized.insert(tick, c.proposal.clone());
                        }
                    }
                    if group.nodes[i].log.insert(tick, c.proposal).is_some() {
                        return Err(format!("group {g} replica {i} committed tick {tick} twice"));
                    }
                }
                _ => {}
            }
        }
    }

    fn answer(&mut self, g: usize, i: usize, a: Answer) {
        let group = &mut self.groups[g];
        let Some(v) = group.pending.as_mut() else {
            return;
        };
        match a {
            Answer::Proposed {
                req,
                digest: Some(d),
            } if req == group.view && v.leader == i => {
                v.digest = Some(d);
                v.valid.insert(i);
            }
            Answer::Verified { req, valid: true } if req == group.view => {
                v.valid.insert(i);
            }
            _ => {}
        }
    }

    fn up(&self, g: usize, i: usize) -> bool {
        self.groups[g].nodes[i].core.is_some()
    }

    fn order(&mut self, g: usize, i: usize, order: Order) -> Result<(), String> {
        let now = self.now;
        if let Some(core) = self.groups[g].nodes[i].core.as_mut() {
            core.order(now, order);
        }
        self.drain(g, i)
    }

    fn oracle_step(&mut self, g: usize) -> Result<(), String> {
        if self.groups[g].pending.is_none() {
            let group = &mut self.groups[g];
            let leader = (group.view as usize) % N;
            group.pending = Some(View {
                leader,
                started: self.now,
                digest: None,
                asked: BTreeSet::new(),
                valid: BTreeSet::new(),
            });
            let order = Order::Propose {
                req: group.view,
                parent: group.tip,
            };
            if self.up(g, leader) {
                self.order(g, leader, order)?;
            }
        }
        let group = &self.groups[g];
        let Some(v) = group.pending.as_ref() else {
            return Ok(());
        };
        let (leader, started, digest) = (v.leader, v.started, v.digest);
        if let Some(d) = digest {
            let ask: Vec<usize> = (0..N)
                .filter(|j| *j != leader && !v.asked.contains(j) && self.up(g, *j))
                .collect();
            for j in ask {
                let group = &mut self.groups[g];
                if let Some(v) = group.pending.as_mut() {
                    v.asked.insert(j);
                }
                let order = Order::Verify {
                    req: group.view,
                    parent: group.tip,
                    digest: d,
                };
                self.order(g, j, order)?;
            }
        }
        let quorum = 2 * self.groups[g].manifest.faults_max() + 1;
        let group = &mut self.groups[g];
        let Some(v) = group.pending.as_ref() else {
            return Ok(());
        };
        if let Some(d) = v.digest
            && v.valid.len() >= quorum
        {
            group.tip = d;
            group.pending = None;
            group.view += 1;
            let proof = group.view.to_le_bytes().to_vec();
            for j in 0..N {
                if self.up(g, j) {
                    self.order(g, j, Order::Notarized { digest: d })?;
                    self.order(
                        g,
                        j,
                        Order::Finalized {
                            digest: d,
                            proof: proof.clone(),
                        },
                    )?;
                }
            }
        } else if self.now >= started + 300 {
            group.nullified += 1;
            let view = group.view;
            group.pending = None;
            group.view += 1;
            for j in 0..N {
                if self.up(g, j) {
                    self.order(g, j, Order::Nullified { view })?;
                }
            }
        }
        Ok(())
    }

    /// One simulated millisecond.
    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        let since = self.now - self.start;
        if since == 100 {
            for g in 0..2 {
                self.submit(
                    g,
                    InputKind::Join {
                        name: "driver".into(),
                    },
                );
            }
        }
        if since == 400 && !self.spawned {
            self.spawned = true;
            self.spawn_storm();
        }
        if let Some(lines) = self.talk {
            self.talk_step(since, lines);
        }
        if self.cross.is_some() {
            self.cross_step(since);
        }
        // Restarts, and the crash of group 2's primary in the middle.
        for g in 0..2 {
            for i in 0..N {
                let node = &self.groups[g].nodes[i];
                if node.core.is_none() && self.now >= node.down_until {
                    let core = boot(&self.groups[g], node);
                    self.groups[g].nodes[i].core = Some(core);
                }
            }
        }
        let middle = self.start + (self.link.heal_at_ms - self.start) / 2;
        if self.link.crash_primary && !self.crashed && self.now >= middle {
            self.crashed = true;
            let group = &mut self.groups[1];
            let leader = group
                .pending
                .as_ref()
                .map_or((group.view as usize) % N, |v| v.leader);
            group.nodes[leader].core = None;
            group.nodes[leader].down_until = self.now + 1_000;
        }
        if self.link.partitions
            && self.link_faulty()
            && self.now >= self.cut_until
            && self.rng.random_bool(0.0005)
        {
            self.cut_until = self.now + self.rng.random_range(100..1_000);
        }
        while self.net.peek().is_some_and(|f| f.0.at <= self.now) {
            let Reverse(f) = self.net.pop().expect("peeked");
            let (g, i) = f.to;
            if !self.up(g, i) {
                continue;
            }
            let msg = Message::decode(&f.bytes).map_err(|e| format!("undecodable: {e}"))?;
            let from = self.groups[f.from.0].manifest.members[f.from.1];
            let now = self.now;
            if let Some(core) = self.groups[g].nodes[i].core.as_mut() {
                core.handle(now, from, msg);
            }
            self.drain(g, i)?;
        }
        for g in 0..2 {
            for i in 0..N {
                let now = self.now;
                if let Some(core) = self.groups[g].nodes[i].core.as_mut()
                    && core.next_deadline().is_some_and(|d| d <= now)
                {
                    core.tick(now);
                }
                self.drain(g, i)?;
            }
            self.oracle_step(g)?;
        }
        self.check_ticks()
    }

    /// Checks every tick both groups have shown since the last check.
    fn check_ticks(&mut self) -> Result<(), String> {
        loop {
            let t = self.checked_to;
            let (Some((a, near_a)), Some((b, near_b))) = (
                self.groups[0].bodies_at.get(&t).cloned(),
                self.groups[1].bodies_at.get(&t).cloned(),
            ) else {
                return Ok(());
            };
            // The proposals of t (offers made at t - 2 are in the sets
            // carried at t - 1) must be final in both groups to judge.
            if !(self.groups[0].finalized.contains_key(&t)
                && self.groups[1].finalized.contains_key(&t))
            {
                return Ok(());
            }
            self.out.near_border_body_ticks += near_a + near_b;
            // Offers sent at t - 1 (carried by the proposals of t).
            for g in 0..2 {
                let p = self.groups[g].finalized[&t].clone();
                self.out.sets_included += p.border.len() as u64;
                for c in &p.border {
                    self.out.border_cert_bytes += postcard_len(c);
                    for e in &c.set.envelopes {
                        if let BorderMessage::Offer {
                            root, switch_tick, ..
                        } = &e.msg
                        {
                            self.offers.insert((*root, *switch_tick), (g, e.tick));
                        }
                    }
                }
            }
            let both: Vec<&ElementId> = a.intersection(&b).collect();
            self.out.doubled += both.len() as u64;
            if t > 0
                && let (Some((pa, _)), Some((pb, _))) = (
                    self.groups[0].bodies_at.get(&(t - 1)),
                    self.groups[1].bodies_at.get(&(t - 1)),
                )
            {
                let before: BTreeSet<ElementId> = pa.union(pb).copied().collect();
                let now: BTreeSet<ElementId> = a.union(&b).copied().collect();
                // Bodies spawn; they never leave the world.
                self.out.in_limbo += before.difference(&now).count() as u64;
                for (from, into, to) in [(pa, &b, 1usize), (pb, &a, 0usize)] {
                    for id in from.iter().filter(|id| into.contains(*id)) {
                        self.out.switches += 1;
                        match self.offers.get(&(*id, t)) {
                            Some((g, at)) if *g == to => {
                                let lat = t - at;
                                *self.out.latency.entry(lat).or_default() += 1;
                                if lat == 2 {
                                    self.out.switches_at_2 += 1;
                                }
                            }
                            _ => *self.out.latency.entry(0).or_default() += 1,
                        }
                    }
                }
            }
            for g in 0..2 {
                self.groups[g].bodies_at.remove(&t.saturating_sub(2));
            }
            self.offers.retain(|(_, s), _| *s + 4 > t);
            self.out.finalized_tick = t;
            self.out.ticks_checked += 1;
            self.checked_to = t + 1;
        }
    }

    /// Runs `ms` of simulated time.
    pub fn run(&mut self, ms: u64) -> Result<Outcome, String> {
        let end = self.now + ms;
        while self.now < end {
            self.step()?;
        }
        let mut out = self.out.clone();
        // Bodies in neither region at the last checked tick.
        let t = self.checked_to.saturating_sub(1);
        if let (Some((a, _)), Some((b, _))) = (
            self.groups[0].bodies_at.get(&t),
            self.groups[1].bodies_at.get(&t),
        ) {
            let owned = a.union(b).count() as u64;
            // The storm's bodies and walls; the crossing scene's avatar.
            let world = if self.cross.is_some() {
                1
            } else {
                u64::from(self.bodies + 2)
            };
            out.lost = world.saturating_sub(owned);
        }
        for g in 0..2 {
            for n in self.groups[g].nodes.iter().filter_map(|n| n.core.as_ref()) {
                out.sets_late += n.stats().border_late + n.stats().border_missed;
            }
        }
        Ok(out)
    }
}

/// Bytes of a certificate as it travels inside a proposal.
fn postcard_len(c: &metatopia_node::replica::BorderCert) -> u64 {
    postcard_bytes(c)
}

fn postcard_bytes<T: serde::Serialize>(v: &T) -> u64 {
    metatopia_sim::snapshot::encode(*b"MTBC", v).len() as u64 - 6
}

/// Bodies of group `g`'s region within 2 m of the border at x = 64.
fn near_border(g: usize, sim: &metatopia_sim::Sim) -> u64 {
    let state = sim.state();
    state
        .bodies
        .iter()
        .filter_map(|(id, _)| state.elements.get(id))
        .filter(|e| {
            let x = e.pos.x;
            if g == 0 {
                x >= Fx::from_int(62)
            } else {
                x < Fx::from_int(2)
            }
        })
        .count() as u64
}

/// A core recovered from its log: genesis, then every logged proposal
/// with the border envelopes it carries.
fn boot(group: &Group, node: &Node) -> Replica {
    let mut region = Region::restore(&group.genesis).expect("the genesis snapshot restores");
    let mut digest = group.manifest.genesis_digest();
    for p in node.log.values() {
        region
            .tick(&p.batch(), group.host.as_ref(), &p.inbox())
            .expect("a logged proposal executes again");
        digest = p.digest();
    }
    let sources = MemSources::default();
    for text in &group.sources {
        sources.put(text).expect("a source in memory");
    }
    Replica::new(
        group.cfg.clone(),
        group.manifest.clone(),
        node.key.clone(),
        group.host.clone(),
        Arc::new(sources),
        region,
        digest,
    )
}

/// Link faults drawn from the seed (loss 0–15 %, duplicates, 1–30 ms
/// delays, partitions, a crash of region 2's primary) until `faulty_ms`.
fn seeded_link(seed: u64, faulty_ms: u64) -> LinkFaults {
    let mut pick = ChaCha8Rng::seed_from_u64(seed ^ 0xb0de);
    LinkFaults {
        loss: pick.random_range(0.0..0.15),
        duplicate: pick.random_range(0.0..0.1),
        delay_ms: (pick.random_range(1..5), pick.random_range(10..30)),
        partitions: pick.random_bool(0.7),
        crash_primary: true,
        heal_at_ms: faulty_ms,
    }
}

/// One seeded run with faults drawn from the seed: `faulty_ms` of storm
/// with link faults and a crash, then `heal_ms` without.
pub fn run_seed(seed: u64, bodies: u32, faulty_ms: u64, heal_ms: u64) -> Result<Outcome, String> {
    let link = seeded_link(seed, faulty_ms);
    let mut h = Harness::new(seed, bodies, link);
    h.run(faulty_ms + heal_ms)
}

/// The journal script in region 2 (the first object there: the root is
/// 2.0 and the driver's avatar 2.1).
pub const TALK_INBOX: ElementId = ElementId::new(2, 2);
/// The relay script in region 1, 2 m from the border.
pub const TALK_RELAY: ElementId = ElementId::new(1, 2);

/// The rules of the talk scene, and their sources (the names).
fn talk_host() -> (RuleHost, Vec<String>) {
    let mut host = RuleHost::new();
    host.add("journal", Rule::Journal);
    host.add(
        "relay",
        Rule::RemoteRelay {
            region: RegionId(2),
            target: TALK_INBOX,
        },
    );
    host.add(
        "relay-back",
        Rule::RemoteRelay {
            region: RegionId(1),
            target: CROSS_JOURNAL,
        },
    );
    (
        host,
        vec!["journal".into(), "relay".into(), "relay-back".into()],
    )
}

fn create(name: &str, x_mm: i64) -> InputKind {
    InputKind::Create {
        parent: None,
        name: name.into(),
        pos: mm(x_mm, 10_000, 0),
    }
}

fn walk(element: ElementId, x_mm: i64) -> InputKind {
    InputKind::Move {
        element,
        to: mm(x_mm, 10_000, 0),
    }
}

fn attach(element: ElementId, name: &str) -> InputKind {
    InputKind::AttachScript {
        element,
        source: metatopia_scripts::hash_source(name),
    }
}

/// What the talk scene measured.
#[derive(Debug, Clone, Default)]
pub struct Talk {
    /// The harness's outcome (hashes checked at every tick as always).
    pub outcome: Outcome,
    /// Lines region 1's finalized batches said (the driver's inputs).
    pub said: Vec<String>,
    /// Per line: how often region 2's journal heard it across the border.
    pub heard: BTreeMap<String, u64>,
    /// Per line: how often the relay's message carrying it reached the
    /// journal.
    pub relayed: BTreeMap<String, u64>,
    /// Journal lines that are neither.
    pub other: Vec<String>,
    /// Region 1's and region 2's counters of items between regions.
    pub counts: [metatopia_physics::region::RemoteCounts; 2],
    /// Whether every live replica of region 2 at the same tick has the
    /// same journal.
    pub journals_agree: bool,
}

/// The talk scene: `lines` lines with `link` faults, run for `ms`.
pub fn talk(seed: u64, lines: u32, link: LinkFaults, ms: u64) -> Result<Talk, String> {
    let mut h = Harness::new(seed, 0, link);
    h.spawned = true;
    h.talk = Some(lines);
    let outcome = h.run(ms)?;
    let mut said = Vec::new();
    for p in h.groups[0].finalized.values() {
        for s in &p.inputs {
            if let InputKind::Say { text, .. } = &s.input.kind {
                said.push(text.clone());
            }
        }
    }
    let heads: Vec<&Region> = h.groups[1]
        .nodes
        .iter()
        .filter_map(|n| n.core.as_ref().map(|c| c.head()))
        .collect();
    let top = heads.iter().map(|r| r.tick_number()).max().unwrap_or(0);
    let at_top: Vec<&&Region> = heads.iter().filter(|r| r.tick_number() == top).collect();
    let journal = |r: &Region| -> Vec<String> {
        r.sim()
            .state()
            .elements
            .get(&TALK_INBOX)
            .and_then(|e| e.script.as_ref())
            .map(|s| {
                String::from_utf8_lossy(&s.state)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = at_top.first().map(|r| journal(r)).unwrap_or_default();
    let journals_agree = at_top.iter().all(|r| journal(r) == first);
    let mut t = Talk {
        outcome,
        said,
        journals_agree,
        ..Talk::default()
    };
    let relayed = format!("rmsg:1:{TALK_RELAY}:heard:");
    for line in first {
        if let Some(text) = line.strip_prefix(&relayed) {
            *t.relayed.entry(text.to_string()).or_default() += 1;
        } else if let Some(text) = line.strip_prefix("heard:") {
            *t.heard.entry(text.to_string()).or_default() += 1;
        } else {
            t.other.push(line);
        }
    }
    for (g, c) in t.counts.iter_mut().enumerate() {
        if let Some(core) = h.groups[g].nodes.iter().find_map(|n| n.core.as_ref()) {
            *c = core.head().remote_counts();
        }
    }
    Ok(t)
}

/// The talk scene with faults drawn from the seed as [`run_seed`] draws
/// them (loss, duplicates, delays, partitions, a crash of region 2's
/// primary) for `faulty_ms`, then `heal_ms` without.
pub fn talk_seed(seed: u64, lines: u32, faulty_ms: u64, heal_ms: u64) -> Result<Talk, String> {
    let link = seeded_link(seed, faulty_ms);
    talk(seed, lines, link, faulty_ms + heal_ms)
}

/// The driver's avatar in the crossing scene (region 1's first element).
pub const CROSS_AVATAR: ElementId = ElementId::new(1, 1);
/// The journal in region 1, 4 m from the border.
pub const CROSS_JOURNAL: ElementId = ElementId::new(1, 2);
/// The charm on the driver's avatar (a journal: it keeps what it gets).
pub const CROSS_CHARM: ElementId = ElementId::new(1, 3);
/// The relay in region 2, 3 m from the border (the driver's avatar there
/// is 2.1 until it leaves).
pub const CROSS_RELAY: ElementId = ElementId::new(2, 2);

/// What the crossing scene measured.
#[derive(Debug, Clone, Default)]
pub struct Cross {
    /// The harness's outcome: the avatar is audited like a body (never
    /// in both regions' states, in limbo only while a verdict is
    /// missing), and every replica's hash checked at every tick.
    pub outcome: Outcome,
    /// Lines region 2's finalized batches said (the driver's inputs).
    pub said: Vec<String>,
    /// Per line: how often region 1's journal heard it across the border.
    pub heard: BTreeMap<String, u64>,
    /// Per line: how often region 2's relay's message carrying it reached
    /// region 1's journal.
    pub relayed: BTreeMap<String, u64>,
    /// Region 1's driver record at the end: (online, moved to).
    pub left: (bool, Option<RegionId>),
    /// Region 2's: (online, avatar).
    pub arrived: (bool, Option<ElementId>),
    /// The charm's journal in region 2 (it came along with its state).
    pub charm: Vec<String>,
    /// Whether every live replica of each region at its top tick has the
    /// same journals and charm.
    pub replicas_agree: bool,
}

/// The crossing scene: the driver walks its avatar (with a scripted
/// charm) from region 1 over the border, then says `lines` lines from
/// region 2, with `link` faults, for `ms`.
pub fn cross(seed: u64, lines: u32, link: LinkFaults, ms: u64) -> Result<Cross, String> {
    let mut h = Harness::new(seed, 0, link);
    h.spawned = true;
    h.cross = Some((lines, 0));
    let outcome = h.run(ms)?;
    let mut said = Vec::new();
    for p in h.groups[1].finalized.values() {
        for s in &p.inputs {
            if let InputKind::Say { text, .. } = &s.input.kind {
                said.push(text.clone());
            }
        }
    }
    let lines_of = |r: &Region, id: ElementId| -> Vec<String> {
        r.sim()
            .state()
            .elements
            .get(&id)
            .and_then(|e| e.script.as_ref())
            .map(|s| {
                String::from_utf8_lossy(&s.state)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let tops: Vec<Vec<&Region>> = (0..2)
        .map(|g| {
            let heads: Vec<&Region> = h.groups[g]
                .nodes
                .iter()
                .filter_map(|n| n.core.as_ref().map(|c| c.head()))
                .collect();
            let top = heads.iter().map(|r| r.tick_number()).max().unwrap_or(0);
            heads
                .into_iter()
                .filter(|r| r.tick_number() == top)
                .collect()
        })
        .collect();
    let (Some(one), Some(two)) = (tops[0].first(), tops[1].first()) else {
        return Err("a group has no live replica".into());
    };
    let replicas_agree = tops[0]
        .iter()
        .all(|r| lines_of(r, CROSS_JOURNAL) == lines_of(one, CROSS_JOURNAL))
        && tops[1]
            .iter()
            .all(|r| lines_of(r, CROSS_CHARM) == lines_of(two, CROSS_CHARM));
    let driver = player_of(&h.driver);
    let p1 = one.sim().state().players.get(&driver);
    let p2 = two.sim().state().players.get(&driver);
    let mut c = Cross {
        outcome,
        said,
        left: p1.map_or((false, None), |p| (p.online, p.moved_to)),
        arrived: p2.map_or((false, None), |p| (p.online, p.avatar)),
        charm: lines_of(two, CROSS_CHARM),
        replicas_agree,
        ..Cross::default()
    };
    let relayed = format!("rmsg:2:{CROSS_RELAY}:heard:");
    for line in lines_of(one, CROSS_JOURNAL) {
        if let Some(text) = line.strip_prefix(&relayed) {
            *c.relayed.entry(text.to_string()).or_default() += 1;
        } else if let Some(text) = line.strip_prefix("heard:") {
            *c.heard.entry(text.to_string()).or_default() += 1;
        }
    }
    Ok(c)
}

/// The crossing scene with faults drawn from the seed as [`run_seed`]
/// draws them, for `faulty_ms`, then `heal_ms` without.
pub fn cross_seed(seed: u64, lines: u32, faulty_ms: u64, heal_ms: u64) -> Result<Cross, String> {
    let link = seeded_link(seed, faulty_ms);
    cross(seed, lines, link, faulty_ms + heal_ms)
}
