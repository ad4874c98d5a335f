//! The node's configuration: `DIR/node.toml`, chosen services and limits.
//!
//! Written with defaults on first start; unknown keys are errors that name
//! the key. Command-line flags override it.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The commented full configuration with every key at its default:
/// `metatopia config example`, and a new data directory's `node.toml`.
pub const EXAMPLE: &str = include_str!("config/example.toml");

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP service (API and viewer).
    pub http: Http,
    /// The Prometheus endpoint on the HTTP service.
    pub metrics: Metrics,
    /// The local world.
    pub world: World,
    /// Membership of the Voronoi overlay.
    pub overlay: Overlay,
    /// Hosting the region with a replica group of several nodes.
    pub group: Group,
    /// Limits on what clients may hold.
    pub limits: Limits,
}

/// `[limits]`: what clients may hold; over a limit the excess is refused
/// with a reason and counted in `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// New inputs one player may send per second on average (a token
    /// bucket); faster ones are refused with 429 and the reason.
    pub inputs_per_player_per_sec: u32,
    /// New inputs one player may send at once after a quiet spell.
    pub inputs_per_player_burst: u32,
    /// Inputs of one player waiting for a tick; more are refused with 429.
    pub inputs_per_player_pending_max: u32,
    /// Region stream (WebSocket) subscribers at once; the next one is
    /// closed with code 1013 and the reason.
    pub stream_subscribers_max: u32,
    /// HTTP connections at once; the next one is answered 503 and closed.
    pub http_connections_max: u32,
    /// HTTP connections at once from one IP address.
    pub http_connections_per_ip_max: u32,
    /// libp2p connections of the group's swarm at once (members,
    /// observers, content fetchers); the next one is denied.
    pub group_connections_max: u32,
    /// libp2p connections with one peer at once (at least 2).
    pub group_connections_per_peer_max: u32,
    /// While this process uses more physical memory than this many MiB,
    /// new HTTP and group connections are refused (503 naming this key;
    /// libp2p denies them). 0: 90 % of the machine's memory.
    pub connections_memory_max_mib: u64,
    /// Bytes in one uploaded blob (an asset or a script source; sources
    /// are also held to 64 KiB by the script host). Default 32 MiB.
    pub content_blob_bytes_max: u64,
    /// Bytes of blobs the local player has added to the content store
    /// (uploads of bytes already stored are free). Default 256 MiB.
    pub content_player_bytes_max: u64,
    /// Bytes in the whole content store (the node hosts one region).
    /// Default 4 GiB.
    pub content_store_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        let caps = crate::content::Caps::default();
        Limits {
            inputs_per_player_per_sec: 1000,
            inputs_per_player_burst: 2000,
            inputs_per_player_pending_max: 256,
            stream_subscribers_max: 256,
            http_connections_max: 1024,
            http_connections_per_ip_max: 128,
            group_connections_max: 1024,
            group_connections_per_peer_max: 4,
            connections_memory_max_mib: 0,
            content_blob_bytes_max: caps.blob_bytes_max,
            content_player_bytes_max: caps.player_bytes_max,
            content_store_bytes_max: caps.store_bytes_max,
        }
    }
}

impl Limits {
    /// The group swarm's connection caps.
    pub fn mesh_caps(&self) -> crate::replica::net::Caps {
        crate::replica::net::Caps {
            total: self.group_connections_max,
            per_peer: self.group_connections_per_peer_max,
            memory_max_bytes: self.connections_memory_max_bytes(),
            ..crate::replica::net::Caps::default()
        }
    }

    /// `connections_memory_max_mib` in bytes (0: 90 % of the machine's
    /// physical memory, as libp2p's memory cap measures it).
    pub fn connections_memory_max_bytes(&self) -> usize {
        match self.connections_memory_max_mib {
            0 => libp2p::memory_connection_limits::Behaviour::with_max_percentage(0.9)
                .max_allowed_bytes(),
            mib => usize::try_from(mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        }
    }

    /// The content store's caps on uploads.
    pub fn content_caps(&self) -> crate::content::Caps {
        crate::content::Caps {
            blob_bytes_max: self.content_blob_bytes_max,
            player_bytes_max: self.content_player_bytes_max,
            store_bytes_max: self.content_store_bytes_max,
        }
    }
}

/// `[group]`: the region is hosted by a replica group of several nodes
/// (`metatopia group init` writes these for a group on loopback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Group {
    /// Host the region with the members below (off: a private world, a
    /// group of one).
    pub enabled: bool,
    /// This member's libp2p listen address for the group.
    pub listen: String,
    /// Every member, this node included, as `PLAYER_ID_HEX@MULTIADDR`; the
    /// first is the region's founding admin. All members must list the
    /// same members in the same order.
    pub members: Vec<String>,
    /// Unix time in milliseconds of the world's tick 0: tick `t` is due at
    /// `epoch_ms + t · tick period` (0: no schedule, a tick is due one
    /// period after the last). Groups hosting neighbour regions must share
    /// one, so their ticks line up (ADR 0013).
    pub epoch_ms: u64,
    /// The primary waits at most this long for a neighbour's certified
    /// border set of the tick before, then proposes without it (a body
    /// crossing then waits). The engine's leader, certification and stall
    /// timeouts grow by as much (`simplex::Timing::with_border_wait`).
    pub border_wait_ms: u64,
    /// ... and at most this long for a live neighbour's (one whose sets
    /// came within the last second, late or not), so a region does not
    /// run ahead of a slower neighbour; the engine's timeouts grow by the
    /// longer of the two waits.
    pub border_wait_live_ms: u64,
    /// Neighbour regions hosted by other replica groups, that bodies cross
    /// to and from (`[[group.neighbours]]`).
    pub neighbours: Vec<Neighbour>,
}

/// `[[group.neighbours]]`: a region next to this one, hosted by another
/// replica group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbour {
    /// Its region id.
    pub region: u32,
    /// World position of its south-west corner, `"x,y"` metres (as
    /// `overlay.origin`); its box is the default region size.
    pub origin: String,
    /// Its group's members as `PLAYER_ID_HEX@MULTIADDR`, in its order (its
    /// `group.members`). Left out: found in the overlay, from the region's
    /// record signed by its group (needs `[overlay] enabled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
}

impl Default for Group {
    fn default() -> Group {
        Group {
            enabled: false,
            listen: "/ip4/127.0.0.1/tcp/0".into(),
            members: Vec::new(),
            epoch_ms: 0,
            border_wait_ms: 20,
            border_wait_live_ms: 100,
            neighbours: Vec::new(),
        }
    }
}

/// Parses `ID_HEX@MULTIADDR` entries of the list `key`.
fn member_list(
    key: &str,
    list: &[String],
) -> Result<Vec<(metatopia_sim::PlayerId, libp2p::Multiaddr)>, String> {
    list.iter()
        .map(|m| {
            let (id, addr) = m.split_once('@').ok_or_else(|| {
                format!(
                    "{key}: {:?} is not PLAYER_ID_HEX@MULTIADDR",
                    crate::quote::cap(m, crate::quote::QUOTE_CHARS_MAX)
                )
            })?;
            let bytes = metatopia_sim::unhex32(id).ok_or_else(|| {
                format!(
                    "{key}: {:?} is not a 64-digit hex player id",
                    crate::quote::cap(id, crate::quote::QUOTE_CHARS_MAX)
                )
            })?;
            let addr = addr.parse().map_err(|e| {
                format!(
                    "{key}: bad multiaddr {:?}: {e}",
                    crate::quote::cap(addr, crate::quote::QUOTE_CHARS_MAX)
                )
            })?;
            Ok((metatopia_sim::PlayerId(bytes), addr))
        })
        .collect()
}

/// A neighbour from `[[group.neighbours]]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourGroup {
    /// Its region.
    pub region: metatopia_sim::RegionId,
    /// Its south-west corner, world millimetres.
    pub origin: metatopia_overlay::Point,
    /// Its members with their addresses, in its order.
    pub members: Vec<(metatopia_sim::PlayerId, libp2p::Multiaddr)>,
}

impl Group {
    /// The members as (player id, address), checked.
    pub fn members(&self) -> Result<Vec<(metatopia_sim::PlayerId, libp2p::Multiaddr)>, String> {
        if self.members.is_empty() {
            return Err(
                "group.members is empty (list every member as PLAYER_ID_HEX@MULTIADDR)".into(),
            );
        }
        member_list("group.members", &self.members)
    }

    /// The neighbours, checked: each names a region other than `home` and
    /// the others, an origin, and its members or none (found in the
    /// overlay).
    pub fn neighbours(&self, home: u32) -> Result<Vec<NeighbourGroup>, String> {
        let mut seen = std::collections::BTreeSet::from([home]);
        self.neighbours
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let key = format!("group.neighbours[{i}]");
                if !seen.insert(n.region) {
                    return Err(format!(
                        "{key}.region: region {} is this region or listed twice",
                        n.region
                    ));
                }
                let origin = parse_point(&n.origin).map_err(|_| {
                    format!(
                        "{key}.origin must be \"x,y\" in metres, got {:?}",
                        crate::quote::cap(&n.origin, crate::quote::QUOTE_CHARS_MAX)
                    )
                })?;
                let members = member_list(&format!("{key}.members"), &n.members)?;
                if members.len() > crate::replica::group::MEMBERS_MAX {
                    return Err(format!(
                        "{key}.members: {} members (limit {})",
                        members.len(),
                        crate::replica::group::MEMBERS_MAX
                    ));
                }
                Ok(NeighbourGroup {
                    region: metatopia_sim::RegionId(n.region),
                    origin,
                    members,
                })
            })
            .collect()
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Listen address; loopback unless you mean it.
    pub addr: SocketAddr,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Serve `GET /metrics`.
    pub enabled: bool,
}

/// `[overlay]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Overlay {
    /// Join the overlay and announce the region.
    pub enabled: bool,
    /// libp2p listen addresses.
    pub listen: Vec<String>,
    /// Peers to join through (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN with mDNS.
    pub mdns: bool,
    /// World position of the region's south-west corner, `"x,y"` metres.
    pub origin: String,
}

impl Default for Overlay {
    fn default() -> Overlay {
        Overlay {
            enabled: false,
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            bootstrap: Vec::new(),
            mdns: false,
            origin: "0,0".into(),
        }
    }
}

/// `[world]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct World {
    /// The home region's id (used when the world is created).
    pub region_id: u32,
    /// A snapshot every this many ticks.
    pub snapshot_every: u64,
    /// Most inputs in one tick's batch.
    pub inputs_per_tick_max: u32,
    /// Most inputs waiting for a tick; beyond it requests get 503.
    pub queue_max: u32,
}

impl Default for Http {
    fn default() -> Http {
        Http {
            addr: SocketAddr::from(([127, 0, 0, 1], 7420)),
        }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics { enabled: true }
    }
}

impl Default for World {
    fn default() -> World {
        World {
            region_id: 1,
            snapshot_every: 200,
            inputs_per_tick_max: 1000,
            queue_max: 4096,
        }
    }
}

impl Config {
    /// Reads `DIR/node.toml`, writing the commented defaults ([`EXAMPLE`])
    /// there first if it is missing.
    pub fn load_or_create(dir: &Path) -> Result<Config> {
        let path = dir.join("node.toml");
        if !path.exists() {
            std::fs::write(&path, EXAMPLE)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Config::load(&path)
    }

    /// Reads and checks a config file; an error names the file, the key
    /// and what it accepts.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses and checks a config's text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config =
            toml::from_str(text).map_err(|e| crate::quote::toml_error(text, &e))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.group.enabled {
            self.group.members()?;
            self.group
                .listen
                .parse::<libp2p::Multiaddr>()
                .map_err(|e| format!("group.listen: bad multiaddr: {e}"))?;
            let neighbours = self.group.neighbours(self.world.region_id)?;
            if let Some(n) = neighbours.iter().find(|n| n.members.is_empty())
                && !self.overlay.enabled
            {
                return Err(format!(
                    "group.neighbours: region {} lists no members, so its group is looked up in the overlay, but [overlay] enabled is false (enable it, or list the members as PLAYER_ID_HEX@MULTIADDR)",
                    n.region
                ));
            }
            if !self.group.neighbours.is_empty() && self.group.epoch_ms == 0 {
                return Err(
                    "group.epoch_ms must be set (Unix ms of tick 0, the same in the neighbours' groups) when group.neighbours is not empty".into(),
                );
            }
            for (name, wait) in [
                ("border_wait_ms", self.group.border_wait_ms),
                ("border_wait_live_ms", self.group.border_wait_live_ms),
            ] {
                if wait > 10_000 {
                    return Err(format!("group.{name} must be in 0..=10000, got {wait}"));
                }
            }
        } else if !self.group.neighbours.is_empty() {
            return Err("group.neighbours needs group.enabled = true".into());
        }
        if parse_point(&self.overlay.origin).is_err() {
            return Err(format!(
                "overlay.origin must be \"x,y\" in metres, got {:?}",
                self.overlay.origin
            ));
        }
        let w = &self.world;
        if !(1..=1_000_000).contains(&w.snapshot_every) {
            return Err("world.snapshot_every must be in 1..=1000000".into());
        }
        if !(1..=100_000).contains(&w.inputs_per_tick_max) {
            return Err("world.inputs_per_tick_max must be in 1..=100000".into());
        }
        if !(1..=1_000_000).contains(&w.queue_max) {
            return Err("world.queue_max must be in 1..=1000000".into());
        }
        let l = &self.limits;
        if !(1..=100_000).contains(&l.stream_subscribers_max) {
            return Err("limits.stream_subscribers_max must be in 1..=100000".into());
        }
        for (key, value) in [
            ("inputs_per_player_per_sec", l.inputs_per_player_per_sec),
            ("inputs_per_player_burst", l.inputs_per_player_burst),
            (
                "inputs_per_player_pending_max",
                l.inputs_per_player_pending_max,
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(format!("limits.{key} must be in 1..=1000000, got {value}"));
            }
        }
        if !(1..=100_000).contains(&l.group_connections_max) {
            return Err("limits.group_connections_max must be in 1..=100000".into());
        }
        if !(2..=64).contains(&l.group_connections_per_peer_max) {
            return Err("limits.group_connections_per_peer_max must be in 2..=64".into());
        }
        if l.connections_memory_max_mib > 1 << 30 {
            return Err(format!(
                "limits.connections_memory_max_mib must be in 0..=1073741824 (0: 90 % of the machine's memory), got {}",
                l.connections_memory_max_mib
            ));
        }
        if !(1..=100_000).contains(&l.http_connections_max) {
            return Err("limits.http_connections_max must be in 1..=100000".into());
        }
        if !(1..=l.http_connections_max).contains(&l.http_connections_per_ip_max) {
            return Err(
                "limits.http_connections_per_ip_max must be in 1..=limits.http_connections_max"
                    .into(),
            );
        }
        for (key, value) in [
            ("content_blob_bytes_max", l.content_blob_bytes_max),
            ("content_player_bytes_max", l.content_player_bytes_max),
            ("content_store_bytes_max", l.content_store_bytes_max),
        ] {
            if !(1..=1 << 50).contains(&value) {
                return Err(format!(
                    "limits.{key} must be in 1..=2^50 bytes, got {value}"
                ));
            }
        }
        Ok(())
    }

    /// The world runner's settings.
    pub fn world_config(&self) -> crate::world::Config {
        crate::world::Config {
            snapshot_every: self.world.snapshot_every,
            inputs_per_tick_max: self.world.inputs_per_tick_max as usize,
            queue_max: self.world.queue_max as usize,
            player_pending_max: self.limits.inputs_per_player_pending_max as usize,
            player_inputs_per_sec: self.limits.inputs_per_player_per_sec,
            player_inputs_burst: self.limits.inputs_per_player_burst,
            neighbours: if self.group.enabled {
                self.group
                    .neighbours(self.world.region_id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| crate::replica::group::Neighbour {
                        region: n.region,
                        members: n.members.into_iter().map(|(m, _)| m).collect(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            border_wait_ms: self.group.border_wait_ms,
            border_wait_live_ms: self.group.border_wait_live_ms,
            epoch_ms: (self.group.enabled && self.group.epoch_ms > 0)
                .then_some(self.group.epoch_ms),
        }
    }
}

/// Parses `"x,y"` in metres (decimal text) into an overlay point (world
/// millimetres, rounded toward negative infinity as `overlay::mm`).
pub fn parse_point(text: &str) -> anyhow::Result<metatopia_overlay::Point> {
    let (x, y) = text
        .split_once(',')
        .ok_or_else(|| anyhow::anyhow!("expected X,Y in metres, got {text:?}"))?;
    let x: metatopia_sim::Fx = x.trim().parse()?;
    let y: metatopia_sim::Fx = y.trim().parse()?;
    Ok(metatopia_overlay::Point::new(x.to_milli(), y.to_milli()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of a TOML document, as `section.key`.
    fn keys(text: &str) -> std::collections::BTreeSet<String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut keys = std::collections::BTreeSet::new();
        for (section, value) in &table {
            for key in value.as_table().unwrap().keys() {
                keys.insert(format!("{section}.{key}"));
            }
        }
        keys
    }

    #[test]
    fn the_example_is_every_key_at_its_default() {
        assert_eq!(Config::parse(EXAMPLE).unwrap(), Config::default());
        let all = toml::to_string(&Config::default()).unwrap();
        assert_eq!(
            keys(EXAMPLE),
            keys(&all),
            "the example lists every key once"
        );
    }

    #[test]
    fn a_bad_config_names_the_key_and_what_it_accepts() {
        let unknown = Config::parse("[world]\nsnapshot_evry = 5\n").unwrap_err();
        assert!(
            unknown.contains("snapshot_evry") && unknown.contains("snapshot_every"),
            "{unknown}"
        );
        let range = Config::parse("[limits]\nhttp_connections_max = 0\n").unwrap_err();
        assert!(
            range.contains("limits.http_connections_max") && range.contains("1..=100000"),
            "{range}"
        );
        let member = format!("{}@/ip4/127.0.0.1/tcp/7500", "11".repeat(32));
        let group = |neighbour: &str| {
            format!(
                "[group]\nenabled = true\nepoch_ms = 1\nmembers = [\"{member}\"]\n[[group.neighbours]]\n{neighbour}\n"
            )
        };
        let ok = Config::parse(&group(&format!(
            "region = 2\norigin = \"256,0\"\nmembers = [\"{member}\"]"
        )))
        .unwrap();
        assert_eq!(ok.group.neighbours(1).unwrap().len(), 1);
        assert_eq!(ok.world_config().neighbours.len(), 1);
        let origin = Config::parse(&group(&format!(
            "region = 2\norigin = \"east\"\nmembers = [\"{member}\"]"
        )))
        .unwrap_err();
        assert!(origin.contains("group.neighbours[0].origin"), "{origin}");
        let own = Config::parse(&group(&format!(
            "region = 1\norigin = \"256,0\"\nmembers = [\"{member}\"]"
        )))
        .unwrap_err();
        assert!(own.contains("group.neighbours[0].region"), "{own}");
        let bad = Config::parse(&group(
            "region = 2\norigin = \"256,0\"\nmembers = [\"xyz\"]",
        ))
        .unwrap_err();
        assert!(bad.contains("group.neighbours[0].members"), "{bad}");
        let no_epoch = Config::parse(
            &group(&format!(
                "region = 2\norigin = \"256,0\"\nmembers = [\"{member}\"]"
            ))
            .replace("epoch_ms = 1\n", ""),
        )
        .unwrap_err();
        assert!(no_epoch.contains("group.epoch_ms"), "{no_epoch}");
        // No members: looked up in the overlay, which must be on.
        let missing = Config::parse(&group("region = 2\norigin = \"256,0\"")).unwrap_err();
        assert!(
            missing.contains("region 2 lists no members") && missing.contains("[overlay] enabled"),
            "{missing}"
        );
        let found = Config::parse(&format!(
            "[overlay]\nenabled = true\n{}",
            group("region = 2\norigin = \"256,0\"")
        ))
        .unwrap();
        assert!(found.group.neighbours(1).unwrap()[0].members.is_empty());
        assert!(found.world_config().neighbours[0].members.is_empty());
        let kind = Config::parse("[metrics]\nenabled = \"yes\"\n").unwrap_err();
        assert!(kind.contains("enabled") && kind.contains("bool"), "{kind}");
    }
}
