//! The command line: `metatopia up | status | say | act | run | replay`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

use metatopia_sim::state::Settings;
use metatopia_sim::{PlayerId, RegionId};

use crate::client;
use crate::config::Config;
use crate::datadir::{DataDir, NodeInfo, default_dir};
use crate::http::{self, App};
use crate::out::write_out;
use crate::replica::Manifest;
use crate::scenario;
use crate::store::{Store, StoreError};
use crate::world;
use metatopia_sim::hex;

/// A line for a long-running verb (`up`): printed if anyone still reads
/// standard output, else dropped; the node does not stop for it.
fn note(text: std::fmt::Arguments<'_>) {
    if write_out(format_args!("{text}\n")).is_err() {
        tracing::debug!("standard output closed: line dropped");
    }
}

/// A warning line on standard error; dropped if nobody reads it.
fn eprint_quiet(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Metatopia: a peer-to-peer virtual world.
#[derive(Debug, Parser)]
#[command(name = "metatopia", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node hosting a private local world on 127.0.0.1, with the viewer.
    Up {
        /// Data directory (default: $METATOPIA_DATA or ~/.local/share/metatopia).
        #[arg(long)]
        data: Option<PathBuf>,
        /// HTTP address (default: `[http] addr` in DIR/node.toml, 127.0.0.1:7420).
        #[arg(long)]
        http: Option<SocketAddr>,
    },
    /// Show the running node's status.
    Status {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Say something in the local world (joins first if needed).
    Say {
        /// The text.
        text: String,
        /// Hearing radius in metres; default: the whole region.
        #[arg(long)]
        radius: Option<String>,
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Send any action as JSON, e.g. '{"do":"move","element":"me","to":"10,10,0"}'.
    Act {
        /// The action.
        json: String,
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Run a scenario file headless; prints each rejected input and script
    /// fault, then a summary, and state_hash=<hex> last.
    Run {
        /// The scenario (TOML).
        scenario: PathBuf,
        /// Ticks to run (default: the scenario's).
        #[arg(long)]
        ticks: Option<u64>,
        /// Print only the summary, not each rejected input and script fault.
        #[arg(long)]
        quiet: bool,
        /// Also print `tick T state_hash=HEX` after every tick, for
        /// `metatopia desync`.
        #[arg(long)]
        trace: bool,
        /// Write the final state's snapshot here (one-region scenarios),
        /// for `metatopia desync`.
        #[arg(long)]
        snapshot: Option<PathBuf>,
    },
    /// Compare two runs that should agree: two snapshot files (`run
    /// --snapshot`) print every difference (element and field, player,
    /// settings, chat, timers, a script's state); two hash traces (`run
    /// --trace` output) print the first tick that differs; two data
    /// directories (`up --data`, nodes stopped) print the first tick whose
    /// logged region hash differs and, rebuilt from snapshot and log
    /// (read-only), what differs in the state after it. Exits with an
    /// error when they differ.
    Desync {
        /// The first snapshot, trace or data directory.
        a: PathBuf,
        /// The second.
        b: PathBuf,
    },
    /// Check body ownership across two neighbouring regions hosted by
    /// different groups, from one member's data directory of each (nodes
    /// stopped; read-only): both logs are replayed from genesis (every
    /// hash checked) and after every tick both hold, each body must be in
    /// exactly one region's state. Prints the hand-offs and their latency
    /// (offer to switch, ticks; 2 without faults), bodies kept without
    /// owner while a verdict was missing (only after lost border messages),
    /// and the border bytes the proposals carried. Exits with an error if
    /// a body had two owners or was lost.
    Handoffs {
        /// One region's data directory.
        a: PathBuf,
        /// Its neighbour's.
        b: PathBuf,
    },
    /// Follow a region hosted by a replica group as an observer (`--via
    /// URL` of any member's node, or `--group HEX@MULTIADDR,...`): runs the
    /// same sim from a snapshot the group vouches for, serves the viewer,
    /// and forwards this node's player's inputs. With only `--at X,Y`:
    /// find who hosts the region at a world point, through the overlay of
    /// the running node. With `--at X,Y --follow`: find the group there
    /// through the overlay (this data directory's `[overlay] bootstrap`)
    /// and follow its region.
    Join {
        /// World point `X,Y` in metres (overlay lookup).
        #[arg(long)]
        at: Option<String>,
        /// With `--at`: follow the region found there as an observer.
        #[arg(long, requires = "at")]
        follow: bool,
        /// The URL of any member's node: the group is read from its status.
        #[arg(long)]
        via: Option<String>,
        /// The group's members, as in their node.toml: `HEX@MULTIADDR`,
        /// comma-separated.
        #[arg(long, value_delimiter = ',')]
        group: Vec<String>,
        /// The region's id (with `--group`; default: node.toml's).
        #[arg(long)]
        region: Option<u32>,
        /// HTTP address of this observer (default: node.toml's).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Data directory (of the local node).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Re-execute a data directory's log from genesis, checking every hash.
    Replay {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Set up a replica group on loopback: `group init --dir BASE --members 4`
    /// writes BASE/m0 … BASE/m3, each a data directory whose node.toml
    /// lists every member; then run `metatopia up --data BASE/mI` for each.
    Group {
        /// What to do.
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Publish (`push FILE [--object ID]`) or fetch (`get HASH`) Lua scripts.
    Script {
        /// What to do.
        #[command(subcommand)]
        cmd: crate::scripts::ScriptCmd,
    },
    /// Upload (`put FILE`) or download (`get HASH [-o FILE]`) assets.
    Asset {
        /// What to do.
        #[command(subcommand)]
        cmd: crate::content::cli::AssetCmd,
    },
    /// The content store: `content gc` removes blobs the region no longer
    /// references (the node stopped).
    Content {
        /// What to do.
        #[command(subcommand)]
        cmd: crate::content::cli::ContentCmd,
    },
    /// node.toml: `config example` prints every key with its default and
    /// what it does; `config check` checks a data directory's file.
    Config {
        /// What to do.
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

/// `metatopia config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print a commented node.toml with every key at its default.
    Example,
    /// Check DIR/node.toml (as `up` would read it) and print the settings
    /// in effect.
    Check {
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// `metatopia config ...`
fn config(cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Example => {
            crate::outln!("{}", crate::config::EXAMPLE.trim_end());
        }
        ConfigCmd::Check { data } => {
            let path = data.unwrap_or_else(default_dir).join("node.toml");
            if !path.exists() {
                bail!(
                    "{} does not exist; a node writes the defaults there when it first starts (`metatopia config example` shows them)",
                    path.display()
                );
            }
            let config = Config::load(&path)?;
            crate::outln!("{}: ok; in effect:\n", path.display());
            crate::outln!("{}", toml::to_string_pretty(&config)?.trim_end());
        }
    }
    Ok(())
}

/// Runs a command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Up { data, http } => up(&data.unwrap_or_else(default_dir), http),
        Command::Status { data, json } => status(&data.unwrap_or_else(default_dir), json),
        Command::Say { text, radius, data } => {
            let mut action = serde_json::json!({"do": "say", "text": text});
            if let Some(r) = radius {
                action["radius"] = serde_json::Value::String(r);
            }
            act(&data.unwrap_or_else(default_dir), &action, true)
        }
        Command::Act { json, data } => {
            let action: serde_json::Value =
                serde_json::from_str(&json).context("the action is not valid JSON")?;
            act(&data.unwrap_or_else(default_dir), &action, false)
        }
        Command::Run {
            scenario,
            ticks,
            quiet,
            trace,
            snapshot,
        } => run_scenario(&scenario, ticks, quiet, trace, snapshot.as_deref()),
        Command::Desync { a, b } => desync(&a, &b),
        Command::Handoffs { a, b } => handoffs(&a, &b),
        Command::Replay { data } => replay(&data.unwrap_or_else(default_dir)),
        Command::Join {
            at,
            follow,
            via,
            group,
            region,
            http,
            data,
        } => {
            let path = data.unwrap_or_else(default_dir);
            match (via, group.is_empty(), at) {
                (None, true, Some(at)) if follow => {
                    observe(&path, Source::At(&at), group, region, http)
                }
                (None, true, Some(at)) => join(&path, &at),
                (None, true, None) => {
                    bail!(
                        "join needs --via URL or --group HEX@MULTIADDR,... (to follow a region), or --at X,Y (to find one)"
                    )
                }
                (Some(url), _, _) => observe(&path, Source::Via(&url), group, region, http),
                (None, false, _) => observe(&path, Source::Group, group, region, http),
            }
        }
        Command::Script { cmd } => crate::scripts::cli(cmd),
        Command::Asset { cmd } => crate::content::cli::asset(cmd),
        Command::Content { cmd } => crate::content::cli::content(cmd),
        Command::Group { cmd } => group(cmd),
        Command::Config { cmd } => config(cmd),
    }
}

/// `metatopia group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Write the data directories of a replica group on 127.0.0.1.
    Init {
        /// Where to put the members' data directories (m0, m1, …).
        #[arg(long)]
        dir: PathBuf,
        /// How many members (4 tolerates one fault; 3f + 1 tolerates f).
        #[arg(long, default_value_t = 4)]
        members: usize,
        /// First member's libp2p port; the others follow.
        #[arg(long, default_value_t = 7500)]
        port: u16,
        /// First member's HTTP port; the others follow.
        #[arg(long, default_value_t = 7420)]
        http_port: u16,
        /// The region's id (the first region's, with `--regions`).
        #[arg(long, default_value_t = 1)]
        region: u32,
        /// Regions in a row west to east, each hosted by its own group of
        /// `--members` and listing the next ones as neighbours (bodies
        /// cross between them): `BASE/r0/m0`, … With 1, `BASE/m0`, ….
        #[arg(long, default_value_t = 1)]
        regions: usize,
        /// Join every member to the overlay on 127.0.0.1 (first port; the
        /// others follow; all meet through the first member), announce the
        /// regions there, and let each group find its neighbours' groups
        /// in it instead of listing their members in node.toml.
        #[arg(long)]
        overlay_port: Option<u16>,
    },
}

fn group(cmd: GroupCmd) -> Result<()> {
    let GroupCmd::Init {
        dir,
        members,
        port,
        http_port,
        region,
        regions,
        overlay_port,
    } = cmd;
    if !(1..=crate::replica::group::MEMBERS_MAX).contains(&members) {
        bail!(
            "--members must be 1 to {}, got {members}",
            crate::replica::group::MEMBERS_MAX
        );
    }
    if !(1..=GROUP_INIT_REGIONS_MAX).contains(&regions) {
        bail!("--regions must be 1 to {GROUP_INIT_REGIONS_MAX}, got {regions}");
    }
    // The overlay's ports must not be the group's or HTTP's (a
    // member dialled on its group port for the overlay never joins).
    if let Some(op) = overlay_port {
        let n = regions * members;
        let range = |p: u16| usize::from(p)..usize::from(p) + n;
        let o = range(op);
        for (flag, p) in [("--port", port), ("--http-port", http_port)] {
            let r = range(p);
            if o.start < r.end && r.start < o.end {
                bail!(
                    "--overlay-port {op}..{} overlaps {flag} {p}..{} ({n} members use each range)",
                    o.end - 1,
                    r.end - 1
                );
            }
        }
    }
    // Every group: its region id, origin (metres), and members' data
    // directories, ports and `ID@ADDR` entries.
    struct Planned {
        region: u32,
        origin: String,
        dirs: Vec<(PathBuf, u16, u16)>,
        list: Vec<String>,
    }
    let size_m = i64::from(Settings::default().size.x.floor_int());
    let mut groups = Vec::new();
    for k in 0..regions {
        let base = if regions == 1 {
            dir.clone()
        } else {
            dir.join(format!("r{k}"))
        };
        let id = u32::try_from(k)
            .ok()
            .and_then(|k| region.checked_add(k))
            .context("--region too high")?;
        let mut planned = Planned {
            region: id,
            origin: format!("{},0", size_m * i64::try_from(k).unwrap_or(0)),
            dirs: Vec::new(),
            list: Vec::new(),
        };
        for i in 0..members {
            let path = base.join(format!("m{i}"));
            if path.join("node.toml").exists() {
                bail!(
                    "{} already has a node.toml; not overwriting it",
                    path.display()
                );
            }
            let d = DataDir::open(&path)?;
            let n = k * members + i;
            let p = u16::try_from(usize::from(port) + n).context("--port too high")?;
            let h = u16::try_from(usize::from(http_port) + n).context("--http-port too high")?;
            planned
                .list
                .push(format!("{}@/ip4/127.0.0.1/tcp/{p}", hex(&d.player()?.0)));
            planned.dirs.push((path, p, h));
        }
        groups.push(planned);
    }
    // The overlay: member n listens on overlay_port + n; all bootstrap
    // through the first.
    let first_overlay = match overlay_port {
        Some(op) => {
            let first = DataDir::open(&groups[0].dirs[0].0)?.player()?;
            let peer = crate::replica::net::peer_id(first)
                .map_err(|e| anyhow::anyhow!("the first member's key: {e}"))?;
            Some(format!("/ip4/127.0.0.1/tcp/{op}/p2p/{peer}"))
        }
        None => None,
    };
    // Neighbours' ticks line up on one epoch: now, to the second.
    let epoch_ms = if regions > 1 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now * 1000
    } else {
        0
    };
    for (k, g) in groups.iter().enumerate() {
        let neighbours: Vec<crate::config::Neighbour> = [k.checked_sub(1), Some(k + 1)]
            .into_iter()
            .flatten()
            .filter_map(|j| groups.get(j))
            .map(|n| crate::config::Neighbour {
                region: n.region,
                origin: n.origin.clone(),
                // With the overlay, found there.
                members: if overlay_port.is_some() {
                    Vec::new()
                } else {
                    n.list.clone()
                },
            })
            .collect();
        for (i, (path, p, h)) in g.dirs.iter().enumerate() {
            let mut config = Config::default();
            config.world.region_id = g.region;
            config.http.addr = SocketAddr::from(([127, 0, 0, 1], *h));
            if regions > 1 {
                config.overlay.origin = g.origin.clone();
            }
            if let (Some(op), Some(first)) = (overlay_port, &first_overlay) {
                let n = k * members + i;
                let o = u16::try_from(usize::from(op) + n).context("--overlay-port too high")?;
                config.overlay.enabled = true;
                config.overlay.listen = vec![format!("/ip4/127.0.0.1/tcp/{o}")];
                if n > 0 {
                    config.overlay.bootstrap = vec![first.clone()];
                }
            }
            config.group = crate::config::Group {
                enabled: true,
                listen: format!("/ip4/127.0.0.1/tcp/{p}"),
                members: g.list.clone(),
                epoch_ms,
                neighbours: neighbours.clone(),
                ..crate::config::Group::default()
            };
            let what = if regions == 1 {
                format!("member {i} of a replica group of {members}")
            } else {
                format!(
                    "member {i} of the group of {members} hosting region {} (of {regions} in a row)",
                    g.region
                )
            };
            let text = format!(
                "# metatopia node configuration: {what}.\n\n{}",
                toml::to_string_pretty(&config)?
            );
            std::fs::write(path.join("node.toml"), text)
                .with_context(|| format!("writing {}", path.join("node.toml").display()))?;
            outln!("metatopia up --data {}", path.display());
        }
    }
    Ok(())
}

/// Most regions `group init --regions` writes.
const GROUP_INIT_REGIONS_MAX: usize = 16;

/// The manifest of a region hosted by the group `[group]` describes: the
/// configured region, default settings, the first member its founding
/// admin. Every member derives the same manifest from the same list.
fn group_manifest(config: &Config) -> Result<Manifest> {
    let members: Vec<_> = config
        .group
        .members()
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let manifest = Manifest {
        region: RegionId(config.world.region_id),
        settings: Settings::default(),
        founders: members.first().copied().into_iter().collect(),
        members,
    };
    manifest
        .check()
        .map_err(|e| anyhow::anyhow!("group.members: {e}"))?;
    Ok(manifest)
}

/// Where the configured region lies for physics: with neighbours, its box
/// at `overlay.origin` and theirs at their origins (every region the
/// default size); without, at the world's origin as before (ADR 0013).
fn placement(config: &Config) -> Result<world::Placement> {
    let size = Settings::default().size;
    let neighbours = if config.group.enabled {
        config
            .group
            .neighbours(config.world.region_id)
            .map_err(|e| anyhow::anyhow!(e))?
    } else {
        Vec::new()
    };
    if neighbours.is_empty() {
        return Ok(world::Placement::solo(size));
    }
    let origin = crate::config::parse_point(&config.overlay.origin)
        .map_err(|e| anyhow::anyhow!("overlay.origin: {e}"))?;
    let around: Vec<_> = neighbours.iter().map(|n| (n.region, n.origin)).collect();
    Ok(world::Placement::new(size, origin, &around))
}

/// The manifest of a new local world: the configured region, the local
/// player its founder and its replica group of one.
fn solo_manifest(dir: &DataDir, region: u32) -> Result<Manifest> {
    Ok(Manifest::solo(
        RegionId(region),
        Settings::default(),
        dir.player()?,
    ))
}

fn up(path: &Path, addr: Option<SocketAddr>) -> Result<()> {
    let dir = DataDir::open(path)?;
    let lock = match dir.lock()? {
        Ok(lock) => lock,
        Err(info) => {
            match info {
                Some(i) => note(format_args!(
                    "metatopia: a node is already running on {} at {} (pid {}); not starting another",
                    path.display(),
                    i.http,
                    i.pid
                )),
                None => note(format_args!(
                    "metatopia: a node is already running on {}; not starting another",
                    path.display()
                )),
            }
            return Ok(());
        }
    };
    let config = Config::load_or_create(&dir.path)?;
    let addr = addr.unwrap_or(config.http.addr);
    let store = Store::open(&dir.db_path())?;
    let wanted = if config.group.enabled {
        group_manifest(&config)?
    } else {
        solo_manifest(&dir, config.world.region_id)?
    };
    let placement = placement(&config)?;
    if store.genesis_hash()?.is_none() {
        let g = store.init_with(&wanted, placement.genesis(&wanted))?;
        info!(hash = %hex(&g.hash()), "new world created");
    }
    let content = content_store(&dir, &config)?;
    let (region, recovery) = store.recover(&crate::scripts::host(&dir.path)?)?;
    let manifest = store
        .manifest()?
        .context("the data directory has a world but no manifest")?;
    if config.group.enabled && manifest != wanted {
        bail!(
            "{}: the world here was created for another region or group than [group] in node.toml describes; move the data directory away or fix node.toml",
            dir.path.display()
        );
    }
    if config.group.enabled && !placement.matches(&region) {
        bail!(
            "{}: the world here was created with another region box or other neighbours than [overlay] origin and [[group.neighbours]] in node.toml give; move the data directory away or fix node.toml",
            dir.path.display()
        );
    }
    let head = store.head_digest(&manifest)?;
    if !recovery.skipped_snapshots.is_empty() {
        warn!(skipped = ?recovery.skipped_snapshots, "corrupt snapshots skipped");
        eprint_quiet(format_args!(
            "metatopia: warning: corrupt snapshots skipped: {:?}",
            recovery.skipped_snapshots
        ));
    }
    if !recovery.corrupt_records.is_empty() {
        eprint_quiet(format_args!(
            "metatopia: warning: the log has corrupt records before tick {} (the world is intact; `metatopia replay` from genesis will fail): {:?}",
            recovery.snapshot_tick, recovery.corrupt_records
        ));
    }
    info!(
        snapshot = recovery.snapshot_tick,
        replayed = recovery.replayed,
        "world recovered"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let hosted = world::Hosted {
        store,
        manifest,
        key: dir.signing_key()?,
        region,
        head,
        host: Arc::new(crate::scripts::host(&dir.path)?),
        sources: Arc::new(crate::scripts::SourceStore::on(content.clone())),
    };
    let result = runtime.block_on(serve(&dir, &config, hosted, content, addr));
    dir.clear_node_info();
    drop(lock);
    result
}

async fn serve(
    dir: &DataDir,
    config: &Config,
    hosted: world::Hosted,
    content: crate::content::Store,
    addr: SocketAddr,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (is the port in use? try --http 127.0.0.1:0)")
    })?;
    // The world as recovered, printed once it serves (it ticks on meanwhile).
    let banner = Banner::of(hosted.region.sim().state(), hosted.region.hash());
    let stop = Arc::new(AtomicBool::new(false));
    let group = config.group.enabled;
    let hosting = crate::overlay::HostingGroup {
        digest: hosted.manifest.genesis_digest(),
        members: if group {
            config
                .group
                .members()
                .map_err(|e| anyhow::anyhow!(e))?
                .into_iter()
                .map(|(p, a)| (p, Some(a)))
                .collect()
        } else {
            vec![(dir.player()?, None)]
        },
    };
    let peers = group.then(|| crate::content::peer::Peers::new(content.clone(), progress_lines()));
    // Neighbours listed without members: their groups are found in the
    // overlay once it is joined (ADR 0013 decision 2).
    let (wanted, learned) = if group {
        let size = Settings::default().size;
        let wanted: Vec<_> = config
            .group
            .neighbours(config.world.region_id)
            .map_err(|e| anyhow::anyhow!(e))?
            .into_iter()
            .filter(|n| n.members.is_empty())
            .map(|n| crate::overlay::Wanted {
                region: n.region,
                bounds: metatopia_overlay::Rect {
                    min: n.origin,
                    max: metatopia_overlay::Point::new(
                        n.origin.x.saturating_add(crate::overlay::mm(size.x)),
                        n.origin.y.saturating_add(crate::overlay::mm(size.y)),
                    ),
                },
            })
            .collect();
        if wanted.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(wanted.len());
            (Some((wanted, tx)), Some(rx))
        }
    } else {
        (None, None)
    };
    let (handle, thread) = if group {
        let membership = world::Membership {
            listen: config
                .group
                .listen
                .parse()
                .map_err(|e| anyhow::anyhow!("group.listen: {e}"))?,
            members: config.group.members().map_err(|e| anyhow::anyhow!(e))?,
            storage: dir.path.join("consensus"),
            peers: peers.clone(),
            caps: config.limits.mesh_caps(),
            neighbours: config
                .group
                .neighbours(config.world.region_id)
                .map_err(|e| anyhow::anyhow!(e))?
                .into_iter()
                .map(|n| (n.region, n.members))
                .collect(),
            learned,
        };
        if !hosted.manifest.members.contains(&dir.player()?) {
            bail!(
                "this node ({}) is not among group.members in node.toml",
                dir.player()?
            );
        }
        world::start_member(hosted, membership, config.world_config(), stop.clone())?
    } else {
        world::start(hosted, config.world_config(), stop.clone())?
    };
    let banner = Banner {
        hosting: Some(hosting),
        wanted,
        ..banner
    };
    let content = Content {
        store: content,
        peers,
    };
    serve_world(dir, config, listener, banner, handle, thread, stop, content).await
}

/// The content store and, with a swarm, its peer side.
struct Content {
    store: crate::content::Store,
    peers: Option<crate::content::peer::Peers>,
}

/// Progress lines on standard error for transfers from peers of 1 MiB or
/// more, one per tenth; none when standard error is not a terminal.
fn progress_lines() -> Option<crate::content::peer::Progress> {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Arc::new(|h: &crate::content::Hash, got: u64, size: u64| {
        if size < 1 << 20 {
            return;
        }
        let before = got.saturating_sub(crate::content::wire::CHUNK_BYTES_MAX as u64);
        let tenth = got.saturating_mul(10) / size;
        if tenth != before.saturating_mul(10) / size {
            eprint_quiet(format_args!(
                "metatopia: fetching asset {}…: {}% of {:.1} MiB",
                &hex(h)[..12],
                tenth * 10,
                size as f64 / f64::from(1 << 20)
            ));
        }
    }))
}

/// The data directory's content store, with node.toml's caps.
fn content_store(dir: &DataDir, config: &Config) -> Result<crate::content::Store> {
    let path = dir.path.join("content");
    crate::content::Store::open(&dir.path, config.limits.content_caps())
        .with_context(|| format!("opening the content store {}", path.display()))
}

/// The world line a starting node prints, and the group it announces in
/// the overlay when it hosts the region.
struct Banner {
    name: String,
    region: u32,
    tick: u64,
    hash: [u8; 32],
    hosting: Option<crate::overlay::HostingGroup>,
    /// Neighbours whose groups it looks up in the overlay, and where to
    /// send what it finds.
    wanted: Option<(
        Vec<crate::overlay::Wanted>,
        tokio::sync::mpsc::Sender<world::LearnedGroup>,
    )>,
}

impl Banner {
    fn of(state: &metatopia_sim::state::State, hash: [u8; 32]) -> Banner {
        Banner {
            name: state.settings.name.clone(),
            region: state.region.0,
            tick: state.tick,
            hash,
            hosting: None,
            wanted: None,
        }
    }
}

/// Serves a started world over HTTP until a signal, then stops it.
#[expect(
    clippy::too_many_arguments,
    reason = "the started world's parts, each used once"
)]
async fn serve_world(
    dir: &DataDir,
    config: &Config,
    listener: tokio::net::TcpListener,
    banner: Banner,
    handle: world::Handle,
    thread: std::thread::JoinHandle<Result<(), crate::store::StoreError>>,
    stop: Arc<AtomicBool>,
    content: Content,
) -> Result<()> {
    let base = format!("http://{}", listener.local_addr()?);
    let Banner {
        name,
        region: region_id,
        tick,
        hash,
        hosting,
        wanted,
    } = banner;
    let token = dir.token()?;
    let faults = crate::faults::follow(&handle);
    let stream = crate::stream::Hub::start(
        &handle,
        faults.clone(),
        config.limits.stream_subscribers_max as usize,
    );
    let connections = Arc::new(crate::listener::ConnectionCounters::default());
    let mut app = App {
        faults,
        connections: connections.clone(),
        stream: stream.clone(),
        world: handle,
        player: dir.player()?,
        token: token.clone().into(),
        data_dir: dir.path.display().to_string().into(),
        metrics: config.metrics.enabled,
        overlay: None,
        content: content.store,
        peers: content.peers.clone(),
        inputs: Arc::default(),
    };
    if let Some(peers) = content.peers {
        tokio::spawn(crate::content::follow::follow(peers, app.world.clone()));
    }
    dir.write_node_info(&NodeInfo {
        http: base.clone(),
        pid: std::process::id(),
    })?;
    note(format_args!(
        "metatopia: world {name:?} (region {region_id}) at tick {tick}, state_hash={}",
        hex(&hash)
    ));
    note(format_args!("metatopia: listening on {base}"));
    note(format_args!("metatopia: viewer {base}/#token={token}"));
    if config.overlay.enabled {
        let state = app.world.latest().sim.state().clone();
        let member = crate::overlay::start(&config.overlay, dir, &state, hosting.as_ref()).await?;
        for a in &member.addrs {
            note(format_args!("metatopia: overlay {a}"));
        }
        if let Some((wanted, found)) = wanted {
            tokio::spawn(crate::overlay::find_neighbours(
                member.handle.clone(),
                wanted,
                found,
            ));
        }
        app.overlay = Some(member.handle);
    }
    let shutdown = {
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            info!("shutting down");
            // Stream subscribers are told and closed, so that the
            // graceful shutdown does not wait for their sockets.
            stream.stop();
            stop.store(true, Ordering::Relaxed);
        }
    };
    let caps = crate::listener::Caps {
        total: config.limits.http_connections_max as usize,
        per_ip: config.limits.http_connections_per_ip_max as usize,
        memory_max_bytes: config.limits.connections_memory_max_bytes(),
    };
    let listener = crate::listener::Capped::new(listener, caps, connections);
    axum::serve(listener, http::router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    stop.store(true, Ordering::Relaxed);
    let result = tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the tick thread panicked"))?;
    result?;
    note(format_args!("metatopia: stopped"));
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status(path: &Path, json: bool) -> Result<()> {
    let dir = DataDir::open(path)?;
    let base = dir.running_node()?;
    let r = client::request(&base, "GET", "/api/status", &[], None)?;
    if r.status != 200 {
        bail!("status failed ({}): {}", r.status, r.text());
    }
    let v = r.json()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    outln!("node:        {base}");
    outln!("tick:        {}", v["tick"]);
    outln!("state_hash:  {}", v["state_hash"].as_str().unwrap_or(""));
    if let Some(regions) = v["regions"].as_array() {
        for r in regions {
            outln!(
                "region {}:    {} ({} elements, {} online)",
                r["id"],
                r["name"],
                r["elements"],
                r["players_online"]
            );
            if let Some(rule) = r["temp_admin_rule"]["summary"].as_str() {
                outln!("temp admin:  {rule}");
            }
        }
    }
    if let Some(players) = v["players_online"].as_array() {
        let names: Vec<&str> = players.iter().filter_map(|p| p["name"].as_str()).collect();
        outln!("online:      {}", names.join(", "));
    }
    print_group(&v["group"])?;
    print_border(&v["border"])?;
    print_health(&v["health"])?;
    Ok(())
}

/// The border part of `metatopia status`: hand-offs and messages with the
/// neighbours, and per neighbour its border sets and the ghosts held.
fn print_border(b: &serde_json::Value) -> Result<()> {
    if !b.is_object() {
        return Ok(());
    }
    let m = &b["messages"];
    outln!(
        "border:      hand-offs {} out, {} in, {} refused, {} aborted, {} pending; messages {} queued, {} resent, {} dropped, {} unroutable, {} delivered, {} refused, {} unacknowledged",
        b["handoffs_out"],
        b["handoffs_in"],
        b["handoffs_refused"],
        b["handoffs_aborted"],
        b["handoffs_pending"],
        m["queued"],
        m["resent"],
        m["dropped"],
        m["unroutable"],
        m["delivered"],
        m["refused"],
        b["messages_unacked"]
    );
    for n in b["neighbours"].as_array().into_iter().flatten() {
        let s = &n["sets"];
        outln!(
            "  region {}: {} ghosts held; sets {} sent, {} delivered, {} late, {} missed, {} ahead, {} refused",
            n["region"],
            n["ghosts"],
            s["sent"],
            s["included"],
            s["late"],
            s["missed"],
            s["ahead"],
            s["refused"]
        );
    }
    Ok(())
}

/// The health line of `metatopia status`.
fn print_health(h: &serde_json::Value) -> Result<()> {
    if h.is_object() {
        let ms = |k: &str| h[k].as_f64().unwrap_or(0.0);
        outln!(
            "health:      tick {:.1} ms (mean {:.1}); {} stream subscribers, {} HTTP connections; {} inputs refused, {} script faults; content {} blobs, {}",
            ms("tick_ms_last"),
            ms("tick_ms_mean"),
            h["stream_subscribers"],
            h["http_connections"],
            h["inputs_refused"],
            h["script_faults"],
            h["content_blobs"],
            bytes_text(h["content_bytes"].as_u64().unwrap_or(0))
        );
    }
    Ok(())
}

/// One peer's link from a status's `group.links` entry, in words: whether
/// it is connected and how long since a frame came from it.
fn link_summary(link: &serde_json::Value) -> String {
    if !link.is_object() {
        return "no link yet".into();
    }
    let heard = match link["last_in_ms_ago"].as_u64() {
        Some(ms) if ms < 1000 => format!("heard {ms} ms ago"),
        Some(ms) => format!("SILENT for {:.1} s", ms as f64 / 1000.0),
        None => "never heard".into(),
    };
    let state = if link["connected"].as_bool() == Some(true) {
        "link up"
    } else {
        "LINK DOWN"
    };
    let mut out = format!("{state}, {heard}");
    if let Some(n) = link["dropped_out"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(", {n} frames to it dropped"));
    }
    out
}

/// The replica group part of `metatopia status`.
fn print_group(g: &serde_json::Value) -> Result<()> {
    let Some(members) = g["members"].as_array() else {
        return Ok(());
    };
    let short = |v: &serde_json::Value| {
        v.as_str()
            .map_or(String::new(), |s| s.chars().take(12).collect())
    };
    let me = g["me"].as_str();
    let primary = g["primary"].as_str();
    outln!(
        "group:       {} member(s), tolerates {} fault(s){}",
        members.len(),
        members.len().saturating_sub(1) / 3,
        if g["observer"].as_bool() == Some(true) {
            "; this node observes"
        } else {
            ""
        }
    );
    let newest = g["checkpoints"].as_array().and_then(|c| c.first());
    for m in members {
        let key = m.as_str().unwrap_or("");
        let mut tags = Vec::new();
        if Some(key) == primary {
            tags.push(format!("primary (view {})", g["view"]));
        }
        if Some(key) == me {
            tags.push("this node".to_string());
        }
        let checkpoint = newest.map_or("no checkpoint yet".to_string(), |c| {
            match c["hashes"][key].as_str() {
                Some(h) => format!("checkpoint tick {} {}", c["tick"], &h[..h.len().min(12)]),
                None => format!("no checkpoint for tick {} yet", c["tick"]),
            }
        });
        if Some(key) != me {
            tags.push(link_summary(&g["links"][key]));
        }
        outln!("  {}…  {checkpoint}  {}", short(m), tags.join(", "));
    }
    if let Some(c) = newest {
        outln!(
            "agreement:   tick {}: {} signed, {}",
            c["tick"],
            c["signed"],
            if c["agree"].as_bool() == Some(true) {
                "hashes agree"
            } else {
                "HASHES DIFFER"
            }
        );
    }
    if g["desync"].is_object() {
        outln!(
            "desync:      at tick {}: mine {} vs the group's {}; resyncing",
            g["desync"]["tick"],
            short(&g["desync"]["mine"]),
            short(&g["desync"]["theirs"])
        );
    }
    if g["resyncs"].as_u64().unwrap_or(0) > 0 {
        outln!("resyncs:     {}", g["resyncs"]);
    }
    let last = &g["last_desync"];
    if last.is_object() {
        outln!(
            "last desync: at tick {}: mine {} vs the group's {}; resynced; what differed (mine != the group's):",
            last["tick"],
            short(&last["mine"]),
            short(&last["theirs"])
        );
        for d in last["differences"].as_array().into_iter().flatten() {
            outln!("  {}", d.as_str().unwrap_or(""));
        }
    }
    for n in g["neighbours"].as_array().into_iter().flatten() {
        let members = n["members"].as_array().map_or(0, Vec::len);
        let group = match n["source"].as_str() {
            Some("unknown") => "group not found yet (looking in the overlay)".to_string(),
            Some(source) => format!("group of {members} (from {source})"),
            None => String::new(),
        };
        outln!("neighbour:   region {}: {group}", n["region"]);
    }
    Ok(())
}

/// Bytes for people: `812 B`, `4.2 KiB`, `1.3 MiB`, `2.0 GiB`.
fn bytes_text(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

/// The id of the region the running node hosts.
fn region_of(base: &str) -> Result<u32> {
    let r = client::request(base, "GET", "/api/status", &[], None)?;
    r.json()?["regions"][0]["id"]
        .as_u64()
        .map(|id| id as u32)
        .ok_or_else(|| anyhow::anyhow!("the node's status names no region"))
}

fn join(path: &Path, at: &str) -> Result<()> {
    let point = crate::overlay::parse_point(at)?;
    let dir = DataDir::open(path)?;
    let base = dir.running_node()?;
    let r = client::request(
        &base,
        "GET",
        &format!("/api/overlay/locate?x_mm={}&y_mm={}", point.x, point.y),
        &[],
        None,
    )?;
    let v = r.json()?;
    if r.status != 200 {
        bail!("{}", v["error"].as_str().unwrap_or("locate failed"));
    }
    let regions = v["regions"].as_array().cloned().unwrap_or_default();
    if regions.is_empty() {
        bail!("no region is announced at {at}");
    }
    for reg in regions {
        let b = &reg["bounds"];
        let hosts: Vec<&str> = reg["hosts"]
            .as_array()
            .map(|h| h.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let members: Vec<&str> = reg["members"]
            .as_array()
            .map(|h| h.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let signed = reg["signed_by"].as_array().map_or(0, Vec::len);
        outln!(
            "region {} bounds_mm=({},{})-({},{}) hosts={} group={} signed_by={signed}/{}",
            reg["id"],
            b[0],
            b[1],
            b[2],
            b[3],
            hosts.join(","),
            reg["group"].as_str().unwrap_or(""),
            members.len()
        );
        if !members.is_empty() && members.iter().all(|m| m.contains('@')) {
            outln!(
                "  follow it: metatopia join --region {} --group {}",
                reg["id"],
                members.join(",")
            );
        } else {
            outln!("  a private world (its host has no group address to follow)");
        }
    }
    Ok(())
}

/// Where an observer learns the group it follows.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// `--via URL`: a member's node's status.
    Via(&'a str),
    /// `--group LIST`: as given.
    Group,
    /// `--at X,Y --follow`: the region's record in the overlay.
    At(&'a str),
}

/// `metatopia join --via URL | --group LIST | --at X,Y --follow`: follows a
/// region as an observer and serves it until a signal.
fn observe(
    path: &Path,
    source: Source<'_>,
    group: Vec<String>,
    region: Option<u32>,
    addr: Option<SocketAddr>,
) -> Result<()> {
    let dir = DataDir::open(path)?;
    let Ok(lock) = dir.lock()? else {
        bail!(
            "a node is already running on {}; join with another --data directory",
            path.display()
        );
    };
    let config = Config::load_or_create(&dir.path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (members, region) = match source {
        Source::Via(url) => {
            let (addresses, id) = group_of(url)?;
            note(format_args!(
                "metatopia: following the group of {url}: {} members (trusting its list; pass --group to pin them)",
                addresses.len()
            ));
            (addresses, region.unwrap_or(id))
        }
        Source::Group => (group, region.unwrap_or(config.world.region_id)),
        Source::At(at) => {
            let point = crate::overlay::parse_point(at)?;
            let found =
                runtime.block_on(crate::overlay::find_group(&config.overlay, &dir, point))?;
            note(format_args!(
                "metatopia: region {} at {at} is hosted by a group of {} (record signed by {} of them): following it",
                found.region,
                found.members.len(),
                found.signed_by
            ));
            (found.members, found.region)
        }
    };
    let members = crate::config::Group {
        members,
        ..crate::config::Group::default()
    }
    .members()
    .map_err(|e| anyhow::anyhow!(e))?;
    if members
        .iter()
        .any(|(m, _)| *m == dir.player().unwrap_or(PlayerId([0; 32])))
    {
        bail!(
            "this node is a member of that group: run `metatopia up --data {}` instead",
            path.display()
        );
    }
    let content = content_store(&dir, &config)?;
    let peers = crate::content::peer::Peers::new(content.clone(), progress_lines());
    let addr = addr.unwrap_or(config.http.addr);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| {
            format!("cannot listen on {addr} (is the port in use? try --http 127.0.0.1:0)")
        })?;
    let observing = world::Observing {
        region: RegionId(region),
        members,
        listen: config
            .group
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("group.listen: {e}"))?,
        checkpoint_every: crate::replica::Config::default().checkpoint_every,
        join_timeout: Duration::from_secs(60),
        peers: Some(peers.clone()),
        caps: config.limits.mesh_caps(),
    };
    note(format_args!(
        "metatopia: joining region {region} as an observer ({} members; waiting for a snapshot f + 1 of them vouch for)",
        observing.members.len()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let (handle, thread) = world::start_observer(
        dir.signing_key()?,
        observing,
        Arc::new(crate::scripts::host(&dir.path)?),
        Arc::new(crate::scripts::SourceStore::on(content.clone())),
        stop.clone(),
    )?;
    note(format_args!(
        "metatopia: joined in {} ms",
        started.elapsed().as_millis()
    ));
    let joined = handle.latest();
    let banner = Banner::of(joined.sim.state(), joined.hash);
    let content = Content {
        store: content,
        peers: Some(peers),
    };
    let result = runtime.block_on(serve_world(
        &dir, &config, listener, banner, handle, thread, stop, content,
    ));
    dir.clear_node_info();
    drop(lock);
    result
}

/// The replica group of the node at `url` (any member's HTTP address),
/// from its status: its members as `HEX@MULTIADDR` and its region id.
pub fn group_of(url: &str) -> Result<(Vec<String>, u32)> {
    let url = url.trim_end_matches('/');
    let r = client::request(url, "GET", "/api/status", &[], None)
        .with_context(|| format!("asking {url} for its group"))?;
    if r.status != 200 {
        bail!("{url}/api/status answered {}: {}", r.status, r.text());
    }
    let v = r.json()?;
    let addresses: Vec<String> = v["group"]["addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if addresses.is_empty() {
        bail!(
            "the node at {url} is not a member of a replica group (its status lists no group addresses)"
        );
    }
    let id = v["regions"][0]["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
        .context("the node's status names no region")?;
    Ok((addresses, id))
}

fn post_action(base: &str, token: &str, action: &serde_json::Value) -> Result<client::Response> {
    let auth = format!("Bearer {token}");
    client::request(
        base,
        "POST",
        &format!("/api/regions/{}/inputs", region_of(base)?),
        &[("Authorization", auth.as_str())],
        Some(&serde_json::to_vec(action)?),
    )
}

fn act(path: &Path, action: &serde_json::Value, join_first: bool) -> Result<()> {
    let dir = DataDir::open(path)?;
    let base = dir.running_node()?;
    let token = dir.token()?;
    if join_first {
        let me = dir.player()?.to_string();
        let r = client::request(
            &base,
            "GET",
            &format!("/api/regions/{}/state", region_of(&base)?),
            &[],
            None,
        )?;
        let online = r.json()?["players"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["id"] == me.as_str() && p["online"] == true)
        });
        if !online {
            let user = std::env::var("USER").unwrap_or_else(|_| "me".into());
            let r = post_action(
                &base,
                &token,
                &serde_json::json!({"do": "join", "name": user}),
            )?;
            if r.status != 200 {
                bail!(
                    "join failed ({}): {}",
                    r.status,
                    r.json()
                        .map(|v| v["error"].to_string())
                        .unwrap_or_else(|_| r.text())
                );
            }
        }
    }
    let r = post_action(&base, &token, action)?;
    if r.status != 200 {
        let msg = r
            .json()
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| r.text());
        bail!("{msg}");
    }
    let v = r.json()?;
    outln!("committed at tick {} (seq {})", v["tick"], v["seq"]);
    Ok(())
}

/// One line about a rejected input or a script fault of a scenario run.
fn notice_line(
    n: &scenario::Notice<'_>,
    names: &std::collections::BTreeMap<String, metatopia_sim::PlayerId>,
) -> String {
    use crate::quote::{QUOTE_CHARS_MAX, cap};
    let who = |p: &metatopia_sim::PlayerId| {
        names
            .iter()
            .find(|(_, id)| *id == p)
            .map_or_else(|| p.to_string(), |(n, _)| n.clone())
    };
    match n {
        scenario::Notice::Rejected {
            tick,
            region,
            input,
            player,
            name,
            action,
            reason,
        } => {
            let action = serde_json::to_string(action).unwrap_or_default();
            format!(
                "tick {tick} region {region}: input[{input}] by {} rejected: {reason}; input {}",
                name.map_or_else(|| player.to_string(), str::to_string),
                cap(&action, QUOTE_CHARS_MAX)
            )
        }
        scenario::Notice::ScriptFault {
            tick,
            region,
            script,
            owner,
            error,
            suspended,
        } => format!(
            "tick {tick} region {region}: script {script} (owner {}) faulted: {error}{}",
            owner.as_ref().map_or_else(|| "none".into(), who),
            if *suspended {
                "; suspended (attach it again to resume)"
            } else {
                ""
            }
        ),
    }
}

fn run_scenario(
    path: &Path,
    ticks: Option<u64>,
    quiet: bool,
    trace: bool,
    snapshot: Option<&Path>,
) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > scenario::FILE_BYTES_MAX as u64 {
        bail!(
            "{}: {} bytes, limit {}",
            path.display(),
            meta.len(),
            scenario::FILE_BYTES_MAX
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if crate::physics_scene::is_physics_scene(&text) {
        if trace || snapshot.is_some() {
            bail!("--trace and --snapshot are for scenario files, not physics scenes");
        }
        let out = crate::physics_scene::run(&text, ticks)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for l in &out.lines {
            outln!("{l}");
        }
        return Ok(());
    }
    let prepared = scenario::parse_at(&text, path.parent())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let host = crate::scripts::scenario_host(&prepared.script_sources)?;
    // Lines are printed as they happen; after stdout closes the run goes on
    // silently and the verb then ends quietly.
    if snapshot.is_some() && prepared.genesis.len() != 1 {
        bail!("--snapshot needs a scenario with one region");
    }
    let mut closed = None;
    let failed = |e| anyhow::anyhow!("{}: {e}", path.display());
    let mut run = prepared.start(ticks).map_err(failed)?;
    loop {
        let stepped = run
            .step(&*host, &mut |n| {
                if quiet || closed.is_some() {
                    return;
                }
                let line = notice_line(&n, &prepared.names);
                if let Err(e) = write_out(format_args!("{line}\n")) {
                    closed = Some(e);
                }
            })
            .map_err(failed)?;
        if !stepped {
            break;
        }
        if trace && closed.is_none() {
            let line = format!(
                "tick {} state_hash={}",
                run.tick() - 1,
                hex(&run.state_hash())
            );
            if let Err(e) = write_out(format_args!("{line}\n")) {
                closed = Some(e);
            }
        }
    }
    if let Some(e) = closed {
        return Err(e);
    }
    if let Some(file) = snapshot
        && let Some(bytes) = run.snapshots().into_values().next()
    {
        std::fs::write(file, bytes).with_context(|| format!("writing {}", file.display()))?;
    }
    let out = run.finish();
    for (id, sim) in &out.sims {
        let s = sim.state();
        let temp_admin = s
            .temp_admin
            .and_then(|p| s.players.get(&p).map(|pl| pl.name.clone()))
            .unwrap_or_else(|| "none".into());
        outln!(
            "region {}: tick {} elements {} players {} temp_admin={} state_hash={}",
            id,
            sim.tick(),
            s.elements.len(),
            s.players.len(),
            temp_admin,
            hex(&sim.hash())
        );
    }
    outln!(
        "inputs: {} accepted, {} rejected, {} duplicates",
        out.accepted,
        out.rejected,
        out.duplicates
    );
    outln!("scripts: {} faults", out.faults);
    outln!("state_hash={}", hex(&out.state_hash()));
    Ok(())
}

fn replay(path: &Path) -> Result<()> {
    if !path.join("world.redb").exists() {
        bail!("no world in {}", path.display());
    }
    let dir = DataDir::open(path)?;
    let store = match Store::open(&dir.db_path()) {
        Ok(s) => s,
        Err(StoreError::InUse(_)) => bail!(
            "the world in {} is open in a running node; stop it first",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    match store.replay_all(&crate::scripts::host(&dir.path)?) {
        Ok((region, count)) => {
            outln!(
                "replayed {count} ticks from genesis (main sim and physics); every checkpoint matches"
            );
            outln!("state_hash={}", hex(&region.hash()));
            Ok(())
        }
        Err(e) => bail!("replay failed: {e}"),
    }
}

/// What `metatopia desync` reads: a snapshot, else a hash trace.
enum RunRecord {
    Snapshot(Box<metatopia_sim::State>),
    Trace(Vec<(u64, [u8; 32])>),
}

fn read_record(path: &Path) -> Result<RunRecord> {
    let max = metatopia_sim::snapshot::DECODE_BYTES_MAX as u64;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > max {
        bail!("{}: {} bytes, limit {max}", path.display(), meta.len());
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.starts_with(&metatopia_sim::snapshot::MAGIC) {
        return metatopia_sim::snapshot::decode_state(&bytes)
            .map(|s| RunRecord::Snapshot(Box::new(s)))
            .map_err(|e| anyhow::anyhow!("{}: not a valid state snapshot: {e}", path.display()));
    }
    let trace = std::str::from_utf8(&bytes)
        .ok()
        .map(crate::desync::parse_trace)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .filter(|t| !t.is_empty());
    match trace {
        Some(t) => Ok(RunRecord::Trace(t)),
        None => bail!(
            "{}: neither a state snapshot (`metatopia run --snapshot`) nor a hash trace (`metatopia run --trace`)",
            path.display()
        ),
    }
}

fn desync(a: &Path, b: &Path) -> Result<()> {
    match (a.is_dir(), b.is_dir()) {
        (true, true) => return desync_dirs(a, b),
        (false, false) => {}
        _ => bail!("give two data directories, or two files, not one of each"),
    }
    match (read_record(a)?, read_record(b)?) {
        (RunRecord::Snapshot(x), RunRecord::Snapshot(y)) => {
            for (path, s) in [(a, &x), (b, &y)] {
                outln!(
                    "{}: region {} tick {} state_hash={}",
                    path.display(),
                    s.region,
                    s.tick,
                    hex(&metatopia_sim::snapshot::state_hash(s))
                );
            }
            let (diffs, more) = crate::desync::diff_states(&x, &y);
            if diffs.is_empty() {
                outln!("the states are identical");
                return Ok(());
            }
            for d in &diffs {
                outln!("{d}");
            }
            if more > 0 {
                outln!("... and {more} more differences");
            }
            bail!("the states differ ({} differences)", diffs.len() + more)
        }
        (RunRecord::Trace(x), RunRecord::Trace(y)) => {
            match crate::desync::first_divergence(&x, &y) {
                None => {
                    outln!("the traces agree on all {} ticks", x.len());
                    Ok(())
                }
                Some(t) => {
                    let at = |tr: &[(u64, [u8; 32])]| {
                        tr.iter()
                            .find(|(u, _)| *u == t)
                            .map_or("absent".into(), |(_, h)| hex(h))
                    };
                    outln!("first diverging tick: {t}");
                    outln!("{}: {}", a.display(), at(&x));
                    outln!("{}: {}", b.display(), at(&y));
                    outln!(
                        "compare the states with `metatopia run FILE --ticks {} --snapshot X.snap` on each side, then `metatopia desync A.snap B.snap`",
                        t + 1
                    );
                    bail!("the runs diverge at tick {t}")
                }
            }
        }
        _ => bail!("give two snapshots or two traces, not one of each"),
    }
}

/// The store of a stopped node's data directory, read-only, for `verb`.
fn open_stopped(dir: &Path, verb: &str) -> Result<Store> {
    match Store::open_read_only(&dir.join("world.redb")) {
        Ok(s) => Ok(s),
        Err(StoreError::Empty) => bail!("no world in {}", dir.display()),
        Err(StoreError::InUse(_)) => bail!(
            "the world in {} is open in a running node; stop it first ({verb} only reads, \
             but the database admits no reader beside its writer)",
            dir.display()
        ),
        Err(e) => bail!("{}: {e}", dir.display()),
    }
}

/// `metatopia handoffs DIR_A DIR_B`: body ownership across two
/// neighbouring regions after every tick of their logs
/// ([`crate::handoffs::audit`]).
fn handoffs(a: &Path, b: &Path) -> Result<()> {
    let (sa, sb) = (open_stopped(a, "handoffs")?, open_stopped(b, "handoffs")?);
    let (ha, hb) = (crate::scripts::host(a)?, crate::scripts::host(b)?);
    let audit = crate::handoffs::audit(&sa, &ha, &sb, &hb)?;
    let (ra, rb) = audit.regions;
    outln!(
        "regions {ra} ({}) and {rb} ({}): {} ticks checked (0..={}), at most {} bodies",
        a.display(),
        b.display(),
        audit.ticks,
        audit.last_tick,
        audit.bodies_max
    );
    let at_2 = audit.switches.iter().filter(|s| s.at_plus_two()).count();
    outln!(
        "hand-offs: {} ({} at offer + 2), {} taken back after a negative verdict",
        audit.switches.len(),
        at_2,
        audit.taken_back.len()
    );
    let latency: Vec<String> = audit
        .latency()
        .iter()
        .map(|(l, n)| format!("{l}: {n}"))
        .collect();
    outln!(
        "latency, offer to switch (ticks: hand-offs): {}",
        latency.join(", ")
    );
    let crossing: Vec<String> = audit
        .crossing_latency()
        .iter()
        .map(|(l, n)| format!("{l}: {n}"))
        .collect();
    outln!(
        "crossing, first offer to switch, hand-offs taken back between (ticks: hand-offs): {}",
        crossing.join(", ")
    );
    for s in audit.switches.iter().filter(|s| !s.at_plus_two()).take(20) {
        match s.offer {
            Some((at, switch)) => outln!(
                "  body {} from region {} to {} at tick {}: offered at {at} for tick {switch}",
                s.body,
                s.from,
                s.to,
                s.tick
            ),
            None => outln!(
                "  body {} from region {} to {} at tick {}: never offered",
                s.body,
                s.from,
                s.to,
                s.tick
            ),
        }
    }
    outln!(
        "body-ticks without owner (kept by the source while a verdict was missing): {}",
        audit.unowned.len()
    );
    outln!(
        "ticks whose proposal went without the other region's border set (late or lost): {}",
        audit.sets_missing.len()
    );
    for (t, id) in audit.unowned_unexplained.iter().take(20) {
        outln!("without owner with no border set missing: body {id} at tick {t}");
    }
    outln!(
        "border sets carried: {} bytes into region {ra}, {} into region {rb}; {} body-ticks near \
         the border{}",
        audit.border_bytes.0,
        audit.border_bytes.1,
        audit.near_border_body_ticks,
        audit
            .bytes_per_tick_per_100_near()
            .map_or(String::new(), |b| format!(
                ": {b} bytes per tick per 100 bodies near it"
            ))
    );
    for (t, id) in audit.doubled.iter().take(20) {
        outln!("two owners: body {id} at tick {t}");
    }
    for (t, id) in audit.gone.iter().take(20) {
        outln!("gone: body {id} at tick {t} (in neither region, kept by neither)");
    }
    if !audit.safe() {
        bail!(
            "{} body-ticks with two owners, {} bodies gone, {} body-ticks without owner with \
             no border set missing",
            audit.doubled.len(),
            audit.gone.len(),
            audit.unowned_unexplained.len()
        );
    }
    outln!("every body had one owner after every tick, or was kept by its source");
    Ok(())
}

/// `metatopia desync DIR_A DIR_B`: the first tick whose logged region hash
/// differs, then both states after it, rebuilt read-only from each
/// directory's nearest snapshot and its log, compared field by field.
fn desync_dirs(a: &Path, b: &Path) -> Result<()> {
    let (sa, sb) = (open_stopped(a, "desync")?, open_stopped(b, "desync")?);
    let (ga, gb) = (sa.genesis_hash()?, sb.genesis_hash()?);
    if ga != gb {
        let show = |g: Option<[u8; 32]>| g.map_or("none".into(), |h| hex(&h));
        bail!(
            "the directories hold different worlds (genesis {} in {}, {} in {})",
            show(ga),
            a.display(),
            show(gb),
            b.display()
        );
    }
    let (ha, hb) = (sa.hashes()?, sb.hashes()?);
    let last = |h: &[(u64, [u8; 32])]| h.last().map(|(t, _)| *t);
    for (dir, h) in [(a, &ha), (b, &hb)] {
        match last(h) {
            Some(t) => outln!("{}: log of ticks 0..={t}", dir.display()),
            None => outln!("{}: empty log (genesis only)", dir.display()),
        }
    }
    // Ticks both logs hold; the shorter log's end bounds the comparison.
    let end = last(&ha).min(last(&hb));
    let common = |h: &[(u64, [u8; 32])]| -> Vec<(u64, [u8; 32])> {
        h.iter().filter(|(t, _)| Some(*t) <= end).copied().collect()
    };
    let Some(tick) = crate::desync::first_divergence(&common(&ha), &common(&hb)) else {
        match end {
            Some(t) => outln!("the logs agree on every tick up to {t}, the last common tick"),
            None => outln!("the logs agree: both hold only the genesis state"),
        }
        return Ok(());
    };
    let at = |h: &[(u64, [u8; 32])]| {
        h.iter()
            .find(|(t, _)| *t == tick)
            .map_or("absent".into(), |(_, x)| hex(x))
    };
    outln!("first diverging tick: {tick}");
    outln!("{}: region_hash={}", a.display(), at(&ha));
    outln!("{}: region_hash={}", b.display(), at(&hb));
    if let Some(t) = tick.checked_sub(1) {
        outln!("last common tick: {t}");
    }
    let mut states = Vec::new();
    for (dir, store) in [(a, &sa), (b, &sb)] {
        if !dir.join("content").is_dir() {
            bail!("{}: no content/ directory (script sources)", dir.display());
        }
        let host = crate::scripts::host(dir)?;
        let rebuilt = store
            .rebuild(tick + 1, &host)
            .with_context(|| format!("rebuilding tick {tick} of {}", dir.display()))?;
        outln!(
            "{}: rebuilt from its snapshot at tick {} and {} logged batches",
            dir.display(),
            rebuilt.snapshot_tick,
            tick + 1 - rebuilt.snapshot_tick
        );
        for (t, reason) in &rebuilt.skipped_snapshots {
            outln!("{}: skipped the snapshot at {t}: {reason}", dir.display());
        }
        for (t, logged, replayed) in &rebuilt.mismatches {
            outln!(
                "{}: tick {t} replays to {}, but its log says {}: the replica computed it \
                 differently from its own inputs (or this build does now)",
                dir.display(),
                hex(replayed),
                hex(logged)
            );
        }
        states.push(rebuilt.region);
    }
    let (diffs, more) =
        crate::desync::diff_states(states[0].sim().state(), states[1].sim().state());
    if diffs.is_empty() {
        outln!(
            "the rebuilt sim states after tick {tick} are equal{}",
            if states[0].hash() == states[1].hash() {
                " and so are the regions: see the replay lines above"
            } else {
                "; the regions differ in the physics (bodies, rapier world or border state)"
            }
        );
    } else {
        outln!("what differs after tick {tick}:");
        for d in &diffs {
            outln!("{d}");
        }
        if more > 0 {
            outln!("... and {more} more differences");
        }
    }
    bail!("the data directories diverge at tick {tick}")
}
