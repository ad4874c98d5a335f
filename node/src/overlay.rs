//! The node's place in the Voronoi overlay (`metatopia-overlay`).
//!
//! When `[overlay] enabled = true`, `up` joins the overlay near the centre of
//! its region (in world millimetres: the region's `origin` plus half its
//! size), through the configured bootstrap peers or mDNS, and announces the
//! region (id, bounds, and this node's peer id as its replica). The overlay
//! identity is the local player's ed25519 key, so the player id and the
//! libp2p peer id are the same key.
//!
//! The region's record names its hosting group: the genesis digest and
//! every member's key with its group address, signed by this member
//! (`metatopia_overlay::record`: peers refuse a record of another group
//! for a region whose group still announces it).
//!
//! `metatopia join --at X,Y` asks the local node, which routes to the owner
//! of the point and returns the regions announced there with their groups.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use metatopia_overlay::{GroupMember, Point, Rect, RegionId, RegionInfo, Service, service};
use metatopia_sim::{Fx, State};

use crate::config;

pub use crate::config::parse_point;
use crate::datadir::DataDir;

/// How long `up` waits for the overlay join before giving up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Metres (fixed point) to overlay millimetres, rounded toward negative infinity.
pub fn mm(v: Fx) -> i64 {
    v.to_milli()
}

/// The region's bounds in world millimetres.
pub fn bounds(origin: Point, state: &State) -> Rect {
    let size = state.settings.size;
    Rect {
        min: origin,
        max: Point::new(
            origin.x.saturating_add(mm(size.x)),
            origin.y.saturating_add(mm(size.y)),
        ),
    }
}

/// A running overlay membership.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The service handle.
    pub handle: metatopia_overlay::Handle,
    /// Addresses others can bootstrap from (each ends in `/p2p/<id>`).
    pub addrs: Vec<String>,
}

/// The group hosting this node's region, as the overlay announces it.
#[derive(Debug, Clone)]
pub struct HostingGroup {
    /// The genesis digest.
    pub digest: [u8; 32],
    /// Every member with its group address (empty for a private world).
    pub members: Vec<(metatopia_sim::PlayerId, Option<libp2p::Multiaddr>)>,
}

/// Joins the overlay near its region's centre and, when this node hosts
/// the region (`group`: its hosting group), announces it.
pub async fn start(
    cfg: &config::Overlay,
    dir: &DataDir,
    state: &State,
    group: Option<&HostingGroup>,
) -> Result<Membership> {
    let origin = parse_point(&cfg.origin).context("[overlay] origin")?;
    let rect = bounds(origin, state);
    let centre = Point::new(
        rect.min.x + (rect.max.x - rect.min.x) / 2,
        rect.min.y + (rect.max.y - rect.min.y) / 2,
    );
    let membership = join_at(cfg, dir, centre).await?;
    let Some(group) = group else {
        return Ok(membership);
    };
    let me = dir.player()?;
    let index = group
        .members
        .iter()
        .position(|(p, _)| *p == me)
        .ok_or_else(|| anyhow!("this node ({me}) is not a member of the group it announces"))?;
    let members = group
        .members
        .iter()
        .map(|(p, a)| GroupMember {
            key: p.0,
            addr: a.as_ref().map(|a| a.to_vec()).unwrap_or_default(),
        })
        .collect();
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut record = RegionInfo::new(RegionId(state.region.0), rect, group.digest, members, seq);
    record.sign(index as u16, &keypair(dir)?)?;
    membership.handle.announce(record).await?;
    Ok(membership)
}

/// The node's libp2p identity: its player key.
fn keypair(dir: &DataDir) -> Result<libp2p::identity::Keypair> {
    let mut secret = dir.signing_key()?.to_bytes();
    libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| anyhow!("player key is not a valid ed25519 key: {e}"))
}

/// Joins the overlay near `point`: at an offset of under a metre taken
/// from the node's key, so that the members of a group, which all sit near
/// their region's centre, never share a site (the overlay ignores
/// duplicate sites).
async fn join_at(cfg: &config::Overlay, dir: &DataDir, point: Point) -> Result<Membership> {
    let me = dir.player()?;
    let jitter = |b: [u8; 2]| i64::from(u16::from_le_bytes(b) % 1000);
    let site = Point::new(
        point.x + jitter([me.0[0], me.0[1]]),
        point.y + jitter([me.0[2], me.0[3]]),
    );
    let mut sc = service::Config::new(site);
    sc.keypair = Some(keypair(dir)?);
    sc.listen = cfg
        .listen
        .iter()
        .map(|a| a.parse().with_context(|| format!("[overlay] listen {a:?}")))
        .collect::<Result<_>>()?;
    sc.bootstrap = cfg
        .bootstrap
        .iter()
        .map(|a| {
            a.parse()
                .with_context(|| format!("[overlay] bootstrap {a:?}"))
        })
        .collect::<Result<_>>()?;
    sc.mdns = cfg.mdns;
    let (handle, _task) = Service::spawn(sc)?;
    tokio::time::timeout(JOIN_TIMEOUT, handle.joined())
        .await
        .map_err(|_| anyhow!("could not join the overlay within {JOIN_TIMEOUT:?}"))??;
    let addrs = handle
        .local_addrs()
        .await?
        .iter()
        .map(|a| a.to_string())
        .collect();
    Ok(Membership { handle, addrs })
}

/// How long [`find_group`] looks for a region's record.
pub const FIND_TIMEOUT: Duration = Duration::from_secs(20);

/// A region's hosting group as its overlay record names it.
#[derive(Debug, Clone)]
pub struct FoundGroup {
    /// The region.
    pub region: u32,
    /// Its members as `PLAYER_ID_HEX@MULTIADDR`.
    pub members: Vec<String>,
    /// How many members' signatures on the record verified.
    pub signed_by: usize,
}

/// Joins the overlay at `point` (without announcing anything), finds the
/// region whose record covers it and returns its group; leaves again.
/// Needs `[overlay] bootstrap` (or mDNS) to meet the overlay.
pub async fn find_group(cfg: &config::Overlay, dir: &DataDir, point: Point) -> Result<FoundGroup> {
    if cfg.bootstrap.is_empty() && !cfg.mdns {
        anyhow::bail!(
            "join --at --follow meets the overlay through [overlay] bootstrap in node.toml (or mdns = true); both are unset"
        );
    }
    let membership = join_at(cfg, dir, point).await?;
    let deadline = tokio::time::Instant::now() + FIND_TIMEOUT;
    loop {
        let located = locate(&membership.handle, point).await?;
        let usable = located
            .regions
            .into_iter()
            .find(|r| !r.signed_by.is_empty() && r.members.iter().all(|m| m.contains('@')));
        if let Some(r) = usable {
            return Ok(FoundGroup {
                region: r.id,
                signed_by: r.signed_by.len(),
                members: r.members,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "no region with a group to follow is announced at ({} mm, {} mm) after {FIND_TIMEOUT:?} (a private world cannot be followed)",
                point.x,
                point.y
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A neighbour region whose hosting group is looked up in the overlay.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The neighbour region.
    pub region: metatopia_sim::RegionId,
    /// Its box in world millimetres (its origin, the default size).
    pub bounds: Rect,
}

/// How often [`find_neighbours`] asks the overlay again for a group it has
/// not found.
pub const FIND_EVERY: Duration = Duration::from_millis(250);

/// Looks up the hosting group of every `wanted` neighbour in the overlay
/// until it is found, and sends each on `found` once: the record must be
/// the neighbour's (its id, the box node.toml gives it), verify (at least
/// one member's signature, checked by the overlay when it stored it) and
/// give every member an address. A record for the neighbour's id with
/// another box is not taken (the world's layout is fixed when it is
/// created) and logged once. Ends when all are found or `found` closes.
///
/// Trust: the overlay keeps the first group that announces a region and
/// lets only that group (or a third of it) replace its record (ADR 0013
/// decision 2, docs/overlay.md), so a neighbour's group is taken on first
/// use; node.toml's `members` pin it instead.
pub async fn find_neighbours(
    handle: metatopia_overlay::Handle,
    mut wanted: Vec<Wanted>,
    found: tokio::sync::mpsc::Sender<crate::world::LearnedGroup>,
) {
    let mut warned = std::collections::BTreeSet::new();
    while !wanted.is_empty() {
        let mut i = 0;
        while i < wanted.len() {
            let w = &wanted[i];
            let centre = Point::new(
                w.bounds.min.x + (w.bounds.max.x - w.bounds.min.x) / 2,
                w.bounds.min.y + (w.bounds.max.y - w.bounds.min.y) / 2,
            );
            let records = match handle.route(centre).await {
                Ok(loc) => loc.regions,
                Err(e) => {
                    tracing::debug!(region = %w.region, error = %e, "overlay lookup failed");
                    Vec::new()
                }
            };
            let group = records
                .iter()
                .filter(|r| r.id.0 == w.region.0)
                .find_map(|r| {
                    if r.bounds != w.bounds {
                        if warned.insert(w.region.0) {
                            tracing::warn!(region = %w.region, "the overlay's record of a neighbour region has another box than node.toml gives it; not taken");
                        }
                        return None;
                    }
                    let signed = r.signers().is_ok_and(|s| !s.is_empty());
                    let members: Option<Vec<_>> = r
                        .members
                        .iter()
                        .map(|m| {
                            let addr = libp2p::Multiaddr::try_from(m.addr.clone()).ok()?;
                            (!m.addr.is_empty()).then_some((metatopia_sim::PlayerId(m.key), addr))
                        })
                        .collect();
                    members.filter(|m| signed && !m.is_empty())
                });
            match group {
                Some(members) => {
                    tracing::info!(region = %w.region, members = members.len(), "neighbour's group found in the overlay");
                    let g = crate::world::LearnedGroup {
                        region: w.region,
                        members,
                    };
                    if found.send(g).await.is_err() {
                        return;
                    }
                    wanted.swap_remove(i);
                }
                None => i += 1,
            }
        }
        tokio::time::sleep(FIND_EVERY).await;
    }
}

/// What `GET /api/overlay/locate` answers.
#[derive(Debug, Serialize)]
pub struct Located {
    /// The point asked for, millimetres.
    pub point: [i64; 2],
    /// Regions announced there.
    pub regions: Vec<LocatedRegion>,
}

/// One region found.
#[derive(Debug, Serialize)]
pub struct LocatedRegion {
    /// Region id.
    pub id: u32,
    /// Bounds, millimetres: `[min_x, min_y, max_x, max_y]`.
    pub bounds: [i64; 4],
    /// Hosting peers (libp2p peer ids).
    pub hosts: Vec<String>,
    /// The hosting group's genesis digest (hex).
    pub group: String,
    /// Its members as `PLAYER_ID_HEX@MULTIADDR` (what `join --group` and
    /// `[group] members` take); a member without an address is its key alone.
    pub members: Vec<String>,
    /// The members whose signatures on the record verified (indexes).
    pub signed_by: Vec<u16>,
}

/// Routes to `point` and lists the regions announced there.
pub async fn locate(handle: &metatopia_overlay::Handle, point: Point) -> Result<Located> {
    let loc = handle.route(point).await?;
    let regions = loc
        .regions
        .iter()
        .filter(|r| r.bounds.contains(point))
        .map(|r| LocatedRegion {
            id: r.id.0,
            bounds: [
                r.bounds.min.x,
                r.bounds.min.y,
                r.bounds.max.x,
                r.bounds.max.y,
            ],
            hosts: r
                .members
                .iter()
                .map(|m| {
                    m.peer_id()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "(invalid key)".into())
                })
                .collect(),
            group: metatopia_sim::hex(&r.group),
            members: r
                .members
                .iter()
                .map(|m| {
                    let key = metatopia_sim::hex(&m.key);
                    match libp2p::Multiaddr::try_from(m.addr.clone()) {
                        Ok(a) if !m.addr.is_empty() => format!("{key}@{a}"),
                        _ => key,
                    }
                })
                .collect(),
            signed_by: r.signers().unwrap_or_default(),
        })
        .collect();
    Ok(Located {
        point: [point.x, point.y],
        regions,
    })
}
