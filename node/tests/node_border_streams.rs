//! The border transport between replica groups (`/metatopia/border/1`,
//! ADR 0013) over real libp2p on loopback: a member of region 1's group and
//! a member of region 2's, each configured with the other as a neighbour,
//! deliver each other's frames with the sender's key; a peer that is not a
//! configured neighbour's member has its border streams refused and
//! counted, and nothing it writes arrives.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;

use metatopia_node::replica::net;
use metatopia_node::replica::wire::player_of;
use metatopia_sim::{PlayerId, RegionId};

/// The next border frame (bounded: 20 s).
async fn recv(rx: &mut net::BorderReceiver) -> (PlayerId, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a frame within 20 s")
        .expect("open")
}

#[test]
fn neighbours_trade_border_frames_and_strangers_are_refused() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let addr = || "/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr");
        let keys: Vec<SigningKey> = (50..53u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let mut meshes = Vec::new();
        for k in &keys {
            meshes.push(
                net::listen(k, addr(), net::Caps::default())
                    .await
                    .expect("listen"),
            );
        }
        let [a, b] = [0, 1].map(|i| player_of(&keys[i]));
        let (a_addr, b_addr) = (meshes[0].addr.clone(), meshes[1].addr.clone());
        // a hosts region 1, b region 2; the stranger claims to be of
        // region 2's group but is in nobody's configuration.
        let (a_tx, mut a_rx) = meshes[0]
            .border(&[(RegionId(2), vec![(b, b_addr)])])
            .expect("border");
        let (b_tx, mut b_rx) = meshes[1]
            .border(&[(RegionId(1), vec![(a, a_addr.clone())])])
            .expect("border");
        let (s_tx, _s_rx) = meshes[2]
            .border(&[(RegionId(1), vec![(a, a_addr)])])
            .expect("border");

        // Streams open asynchronously: send until one arrives.
        let deliver = async {
            loop {
                a_tx.send(RegionId(2), Bytes::from_static(b"from a"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let got = tokio::select! {
            got = recv(&mut b_rx) => got,
            () = deliver => unreachable!(),
        };
        assert_eq!(got, (a, b"from a".to_vec()));
        // A frame for a region that is not a neighbour goes nowhere.
        b_tx.send(RegionId(9), Bytes::from_static(b"nowhere"));
        let stranger_tries = async {
            loop {
                s_tx.send(RegionId(1), Bytes::from_static(b"from a stranger"));
                b_tx.send(RegionId(1), Bytes::from_static(b"from b"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let refused = async {
            let mut from_b = 0;
            while meshes[0].counters.border_refused.load(Ordering::Relaxed) == 0 || from_b < 3 {
                let (who, bytes) = recv(&mut a_rx).await;
                assert_eq!(who, b, "only the neighbour's member is heard");
                assert_eq!(bytes, b"from b");
                from_b += 1;
            }
        };
        tokio::select! {
            () = refused => {},
            () = stranger_tries => unreachable!(),
        }
        assert!(meshes[0].counters.border_refused.load(Ordering::Relaxed) >= 1);
    });
}
