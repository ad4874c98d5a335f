//! The driver of one member of a replica group of several: it runs the
//! [`Replica`] core against the [`Simplex`] engine and the members'
//! channel, on any commonware runtime (the node's tokio runtime, the
//! harness's deterministic one) and any transport that implements
//! commonware's `Sender`/`Receiver` (libp2p streams in a node, the
//! simulated network in the harness).
//!
//! One loop: wait for an engine order, a member's message, a player's
//! input or the core's next deadline; hand it to the core; carry out the
//! core's outputs (answers to the engine, messages to members, the rest to
//! the caller's sink).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use commonware_cryptography::ed25519::PublicKey;
use commonware_macros::select;
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::Clock;
use commonware_utils::channel::mpsc;
use tracing::{debug, warn};

use metatopia_sim::{PlayerId, RegionId};

use super::core::{Output, To};
use super::group::Neighbour;
use super::simplex::{Simplex, member, public_key};
use super::wire::{Message, Proposal};
use super::{Answer, Engine, Replica, SignedInput};

/// Milliseconds since the Unix epoch on `clock`.
pub fn now_ms(clock: &impl Clock) -> u64 {
    clock
        .current()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Test-only misbehaviour of a member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// As primary, put a proposal that skips a tick to the vote instead
    /// of the one the core built (every honest member refuses it).
    pub invalid_proposals: bool,
}

/// Border traffic with the groups hosting neighbour regions (ADR 0013).
pub struct Border {
    /// Sends an encoded message to every member of the group hosting a
    /// region (bounded and lossy: the transport drops and counts).
    pub send: Box<dyn FnMut(RegionId, Bytes) + Send>,
    /// Encoded messages from neighbours' members, with the sender.
    pub recv: mpsc::Receiver<(PlayerId, Vec<u8>)>,
    /// Neighbours' groups learned after the start (the overlay's signed
    /// region records), for the core; the transport already knows them.
    pub groups: Option<mpsc::Receiver<Neighbour>>,
}

impl std::fmt::Debug for Border {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Border").finish_non_exhaustive()
    }
}

/// The next border message, or never without border traffic.
async fn border_next(border: &mut Option<Border>) -> Option<(PlayerId, Vec<u8>)> {
    match border {
        Some(b) => b.recv.recv().await,
        None => futures::future::pending().await,
    }
}

/// The next neighbour's group learned, or never.
async fn group_next(groups: &mut Option<mpsc::Receiver<Neighbour>>) -> Option<Neighbour> {
    match groups {
        Some(g) => g.recv().await,
        None => futures::future::pending().await,
    }
}

/// Runs a member until the engine or the network stops. `inputs` brings
/// players' signed inputs; `border`, if given, carries border sets to and
/// from neighbour groups; every output that is not for the engine or the
/// network goes to `sink`.
#[allow(clippy::too_many_arguments)]
pub async fn run<C, S, R>(
    clock: C,
    mut core: Replica,
    mut engine: Simplex,
    (mut tx, mut rx): (S, R),
    mut inputs: mpsc::Receiver<SignedInput>,
    mut border: Option<Border>,
    faults: Faults,
    mut sink: impl FnMut(Output) + Send,
) where
    C: Clock,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
    let mut groups = border.as_mut().and_then(|b| b.groups.take());
    loop {
        // At least a millisecond from now: a deadline the core could not
        // act on must not spin the loop.
        let soonest = now_ms(&clock).saturating_add(1);
        let wake = core.next_deadline().map_or(
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4_000),
            |d| UNIX_EPOCH + Duration::from_millis(d.max(soonest)),
        );
        select! {
            order = engine.next_order() => {
                let Some(order) = order else { return };
                core.order(now_ms(&clock), order);
            },
            msg = rx.recv() => {
                let Ok((from, bytes)) = msg else { return };
                match Message::decode(bytes.as_ref()) {
                    Ok(m) => core.handle(now_ms(&clock), member(&from), m),
                    Err(e) => debug!(error = %e, "member message refused"),
                }
            },
            msg = border_next(&mut border) => {
                match msg {
                    // Only border sets come this way; the core checks the
                    // sender is a member of the neighbour's group.
                    Some((from, bytes)) => match Message::decode(&bytes) {
                        Ok(m @ Message::Border { .. }) => core.handle(now_ms(&clock), from, m),
                        Ok(_) => debug!(from = %from, "non-border message from a neighbour refused"),
                        Err(e) => debug!(from = %from, error = %e, "border message refused"),
                    },
                    // The transport stopped: no more border traffic.
                    None => border = None,
                }
            },
            group = group_next(&mut groups) => {
                match group {
                    Some(n) => {
                        if let Err(e) = core.set_neighbour(n) {
                            warn!(error = %e, "neighbour's group not taken");
                        }
                    }
                    // Nobody learns groups any more.
                    None => groups = None,
                }
            },
            input = inputs.recv() => {
                if let Some(input) = input {
                    let (player, seq) = (input.input.player, input.input.seq);
                    if let Err(refusal) = core.submit(input) {
                        debug!(error = %refusal, "input refused");
                        sink(Output::Refused { player, seq, refusal });
                    }
                }
            },
            _ = clock.sleep_until(wake) => {},
        }
        core.tick(now_ms(&clock));
        while let Some(out) = core.poll_output() {
            match out {
                Output::Answer(a) => {
                    let a = match (faults.invalid_proposals, a) {
                        (
                            true,
                            Answer::Proposed {
                                req,
                                digest: Some(_),
                            },
                        ) => {
                            let bad = invalid_proposal(&core);
                            tx.send(
                                Recipients::All,
                                Message::Proposal(bad.clone()).encode(),
                                true,
                            );
                            Answer::Proposed {
                                req,
                                digest: Some(bad.digest()),
                            }
                        }
                        (_, a) => a,
                    };
                    engine.answer(a);
                }
                Output::Send { to, msg } => {
                    let recipients = match to {
                        To::All => Recipients::All,
                        To::One(p) => match public_key(p) {
                            Some(k) => Recipients::One(k),
                            None => continue,
                        },
                        To::Some(ps) => {
                            Recipients::Some(ps.into_iter().filter_map(public_key).collect())
                        }
                        // Border sets for a neighbour's group; a member
                        // with no neighbours configured never sends one.
                        To::Region(region) => {
                            match &mut border {
                                Some(b) => (b.send)(region, Bytes::from(msg.encode())),
                                None => debug!(%region, "border set not sent: no border transport"),
                            }
                            continue;
                        }
                    };
                    let priority = matches!(msg, Message::Proposal(_));
                    tx.send(recipients, msg.encode(), priority);
                }
                other => sink(other),
            }
        }
    }
}

/// A proposal that follows the head but skips a tick.
fn invalid_proposal(core: &Replica) -> Proposal {
    let head = core.head();
    let mut p = Proposal {
        region: core.manifest().region,
        tick: head.tick_number() + 1,
        parent: [0; 32],
        time_ms: head.sim().state().time_ms,
        inputs: Vec::new(),
        sources: Vec::new(),
        border: Vec::new(),
    };
    // The head is the core's own (valid) proposal; build on its parent.
    p.parent = core.head_parent();
    p
}
