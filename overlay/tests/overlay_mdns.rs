//! Two overlay services with mDNS on and no bootstrap address find each
//! other and form one overlay. libp2p's mDNS ignores loopback interfaces, so
//! this needs a multicast-capable interface (the kernel loops multicast back
//! to local sockets); the services then dial each other on 127.0.0.1.
//!
//! It is ignored by default: mDNS sends multicast on the machine's real
//! network interface, and the project's automatic tests stay on loopback or
//! in namespaces they create. Run it by hand on a LAN-connected machine:
//! `cargo test -p metatopia-overlay --test overlay_mdns -- --ignored`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use metatopia_overlay::{Config, Point, Rect, Service, service};

fn config(pos: Point) -> service::Config {
    let mut cfg = service::Config::new(pos);
    cfg.mdns = true;
    // mDNS only advertises listen addresses on the interface it answers on
    // (and never on loopback), so listen on every interface.
    cfg.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().expect("multiaddr")];
    // Long enough that discovery, not the fallback, decides.
    cfg.mdns_wait = Duration::from_secs(5);
    cfg.overlay = Config {
        world: Rect {
            min: Point::new(0, 0),
            max: Point::new(1_000_000, 1_000_000),
        },
        heartbeat_ms: 500,
        failure_timeout_ms: 3_000,
        query_timeout_ms: 20_000,
        ..Config::default()
    };
    cfg
}

async fn scenario() -> Result<()> {
    let (a, ta) = Service::spawn(config(Point::new(100_000, 100_000)))?;
    let (b, tb) = Service::spawn(config(Point::new(900_000, 900_000)))?;
    let j = tokio::time::timeout(Duration::from_secs(20), async {
        a.joined().await?;
        b.joined().await
    })
    .await;
    eprintln!("joined: {j:?}; a {:?}; b {:?}", a.status(), b.status());
    j.context("joining timed out")??;
    // One overlay: each is the other's Voronoi neighbour, and a point next
    // to b routed from a ends at b.
    for (h, other) in [(&a, &b), (&b, &a)] {
        let want = vec![other.node_id()];
        h.watch()
            .wait_for(|s| s.joined && s.voronoi == want)
            .await
            .context("service stopped")?;
    }
    let loc = a.route(Point::new(880_000, 910_000)).await?;
    ensure!(loc.owner.id == b.node_id(), "routed to {:?}", loc.owner.id);
    ta.abort();
    tb.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "multicast on the machine's network interface; run by hand with --ignored"]
async fn mdns_two_services_find_each_other_without_bootstrap() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(60), scenario())
        .await
        .context("mDNS scenario exceeded its time bound")?
}
