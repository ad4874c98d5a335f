//! The node's place in the Voronoi overlay (`metatopia-overlay`).
//!
//! When `[overlay] enabled = true`, `up` joins the overlay at the centre of
//! its region (in world millimetres: the region's `origin` plus half its
//! size), through the configured bootstrap peers or mDNS, and announces the
//! region (id, bounds, and this node's peer id as its replica). The overlay
//! identity is the local player's ed25519 key, so the player id and the
//! libp2p peer id are the same key.
//!
//! `metatopia join --at X,Y` asks the local node, which routes to the owner
//! of the point and returns the regions announced there.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use metatopia_overlay::{Point, Rect, RegionId, RegionInfo, Service, service};
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

/// Joins the overlay and announces the region.
pub async fn start(cfg: &config::Overlay, dir: &DataDir, state: &State) -> Result<Membership> {
    let origin = parse_point(&cfg.origin).context("[overlay] origin")?;
    let rect = bounds(origin, state);
    let centre = Point::new(
        rect.min.x + (rect.max.x - rect.min.x) / 2,
        rect.min.y + (rect.max.y - rect.min.y) / 2,
    );
    let mut secret = dir.signing_key()?.to_bytes();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| anyhow!("player key is not a valid ed25519 key: {e}"))?;
    let mut sc = service::Config::new(centre);
    sc.keypair = Some(keypair);
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
    handle
        .announce(RegionInfo {
            id: RegionId(state.region.0),
            bounds: rect,
            replicas: vec![handle.peer_id().to_bytes()],
        })
        .await?;
    Ok(Membership { handle, addrs })
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
                .replicas
                .iter()
                .map(|b| {
                    libp2p::PeerId::from_bytes(b)
                        .map(|p| p.to_string())
                        .unwrap_or_else(|_| "(invalid peer id)".into())
                })
                .collect(),
        })
        .collect();
    Ok(Located {
        point: [point.x, point.y],
        regions,
    })
}
