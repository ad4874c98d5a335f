//! Sixteen real libp2p nodes on loopback: they join, route to points,
//! answer AOI queries, find an announced region, and survive two of them
//! dying. Every wait is on an event (status change or reply) under one
//! overall time bound; nothing sleeps to synchronise.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use metatopia_overlay::{
    Config, Handle, NodeId, Oracle, Point, Rect, RegionId, RegionInfo, Service, service,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WORLD: i64 = 1_000_000;

fn overlay_config() -> Config {
    Config {
        aoi_radius_mm: 200_000,
        aoi_buffer_mm: 20_000,
        world: Rect {
            min: Point::new(0, 0),
            max: Point::new(WORLD, WORLD),
        },
        // Generous: debug builds on a loaded machine answer slowly, and a
        // live peer wrongly declared dead would make the checks flaky.
        heartbeat_ms: 500,
        failure_timeout_ms: 3_000,
        join_timeout_ms: 2_000,
        query_timeout_ms: 20_000,
        ..Config::default()
    }
}

async fn converge(nodes: &[(Handle, Point)]) -> Result<()> {
    let sites: Vec<(NodeId, Point)> = nodes.iter().map(|(h, p)| (h.node_id(), *p)).collect();
    let truth = Oracle::new(&sites).neighbours();
    for (h, _) in nodes {
        let want: Vec<NodeId> = truth
            .get(&h.node_id())
            .context("in oracle")?
            .iter()
            .copied()
            .collect();
        let mut rx = h.watch();
        rx.wait_for(|s| s.joined && s.voronoi == want)
            .await
            .context("service stopped while converging")?;
    }
    Ok(())
}

async fn check_routing_and_aoi(nodes: &[(Handle, Point)], rng: &mut ChaCha8Rng) -> Result<()> {
    let sites: Vec<(NodeId, Point)> = nodes.iter().map(|(h, p)| (h.node_id(), *p)).collect();
    let oracle = Oracle::new(&sites);
    for k in 0..12 {
        let t = Point::new(rng.random_range(0..=WORLD), rng.random_range(0..=WORLD));
        let (from, _) = &nodes[k % nodes.len()];
        let loc = from.route(t).await?;
        ensure!(
            Some(loc.owner.id) == oracle.owner(t),
            "route to {t:?} ended at the wrong owner"
        );
        ensure!(loc.owner_peer.is_some());
    }
    for k in 0..4 {
        let c = Point::new(rng.random_range(0..=WORLD), rng.random_range(0..=WORLD));
        let r: u64 = rng.random_range(100_000..400_000);
        let (from, _) = &nodes[(k * 5) % nodes.len()];
        let got: BTreeSet<NodeId> = from.aoi(c, r).await?.into_iter().map(|c| c.id).collect();
        let want: BTreeSet<NodeId> = sites
            .iter()
            .filter(|(_, p)| p.dist2(c) <= u128::from(r) * u128::from(r))
            .map(|(id, _)| *id)
            .collect();
        ensure!(got == want, "aoi at {c:?} r={r}: got {got:?} want {want:?}");
    }
    Ok(())
}

async fn scenario() -> Result<()> {
    let seed = 16;
    println!("seed {seed}; reproduce with SIM_SEED={seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut nodes: Vec<(Handle, Point)> = Vec::new();
    let mut tasks = Vec::new();
    let mut boot = Vec::new();
    for i in 0..16 {
        let pos = Point::new(rng.random_range(0..=WORLD), rng.random_range(0..=WORLD));
        let mut cfg = service::Config::new(pos);
        cfg.overlay = overlay_config();
        cfg.bootstrap = boot.clone();
        let (h, task) = Service::spawn(cfg)?;
        if i == 0 {
            boot = h.local_addrs().await?;
            ensure!(!boot.is_empty());
        }
        nodes.push((h, pos));
        tasks.push(task);
    }
    let t0 = std::time::Instant::now();
    for (h, _) in &nodes {
        h.joined().await?;
    }
    println!("joined after {:?}", t0.elapsed());
    converge(&nodes).await?;
    println!("converged after {:?}", t0.elapsed());
    check_routing_and_aoi(&nodes, &mut rng).await?;
    println!("checked after {:?}", t0.elapsed());

    // A region hosted at node 3 is found from anywhere inside it.
    let host = nodes[3].1;
    let bounds = Rect {
        min: Point::new(host.x - 100_000, host.y - 100_000),
        max: Point::new(host.x + 100_000, host.y + 100_000),
    };
    let key = libp2p::identity::Keypair::ed25519_from_bytes([42; 32]).expect("32 bytes");
    let region = RegionInfo::signed_by_all(RegionId(42), bounds, [42; 32], &[key], 1);
    let stored = nodes[3].0.announce(region.clone()).await?;
    ensure!(stored >= 1);
    let inside = Point::new(host.x + 50_000, host.y - 70_000);
    ensure!(nodes[11].0.locate(inside).await? == Some(region.clone()));

    // Two nodes die without a word; the rest repair and keep working.
    for victim in [9usize, 5] {
        tasks[victim].abort();
        nodes.remove(victim);
    }
    converge(&nodes).await?;
    println!("repaired after {:?}", t0.elapsed());
    check_routing_and_aoi(&nodes, &mut rng).await?;
    println!("checked after {:?}", t0.elapsed());
    let again = nodes[10].0.locate(inside).await?;
    ensure!(again == Some(region), "region lost after failures");
    for t in tasks {
        t.abort();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libp2p_sixteen_nodes_join_route_aoi_and_survive_two_deaths() -> Result<()> {
    // One bound for the whole scenario (a hang fails instead of blocking CI).
    tokio::time::timeout(Duration::from_secs(120), scenario())
        .await
        .context("scenario exceeded its time bound")?
}
