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

use commonware_cryptography::ed25519::PublicKey;
use commonware_macros::select;
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::Clock;
use commonware_utils::channel::mpsc;
use tracing::debug;

use super::core::{Output, To};
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

/// Runs a member until the engine or the network stops. `inputs` brings
/// players' signed inputs; every output that is not for the engine or the
/// network goes to `sink`.
pub async fn run<C, S, R>(
    clock: C,
    mut core: Replica,
    mut engine: Simplex,
    (mut tx, mut rx): (S, R),
    mut inputs: mpsc::Receiver<SignedInput>,
    faults: Faults,
    mut sink: impl FnMut(Output) + Send,
) where
    C: Clock,
    S: Sender<PublicKey = PublicKey>,
    R: Receiver<PublicKey = PublicKey>,
{
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
                        // Border sets for neighbour groups: their transport
                        // is not built yet (ADR 0013); a member with no
                        // neighbours configured never sends one.
                        To::Region(region) => {
                            debug!(%region, "border set for a neighbour group not sent: no transport yet");
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
