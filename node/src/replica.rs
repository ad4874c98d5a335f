//! Replication: a region run in lockstep by a replica group.
//!
//! The [`Replica`] core is sans IO: signed submissions, members' messages,
//! the ordering engine's requests and `now` go in; answers for the engine,
//! messages for members, states to show, ticks to commit and input
//! receipts come out. The ordering engine sits behind the small
//! [`Engine`] trait: it asks the core to propose and verify batches and
//! tells it what was notarized, finalized and nullified; it never sees a
//! batch, only digests. A private local world is a group of one whose
//! engine is [`Solo`]; a group of several runs a BFT engine (commonware
//! Simplex, see `docs/adr/`), and the same core.
//!
//! Layout:
//! - [`wire`]: signed inputs, proposals, checkpoints, member messages.
//! - [`verify`]: signature checks, one rule set (ZIP 215), batched.
//! - [`group`]: the region manifest and the genesis digest.
//! - [`core`]: the replica state machine.
//! - [`simplex`]: the BFT engine (commonware Simplex) behind [`Engine`].
//! - [`member`]: the driver of a member of a group of several.
//! - [`observer`]: a node that follows a group's region without voting.
//! - [`net`]: the members' libp2p streams, as commonware `Sender`/`Receiver`.

pub mod core;
pub mod group;
pub mod member;
pub mod net;
pub mod observer;
pub mod simplex;
pub mod verify;
pub mod wire;

use std::collections::VecDeque;

pub use self::core::{Config, MemSources, Output, Published, Replica, SourceBook};
pub use self::group::{Manifest, Neighbour};
pub use self::wire::{BorderCert, BorderSet, Digest, Message, Proposal, SignedInput};

/// What the ordering engine asks of, or tells, the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    /// Propose the batch that follows `parent`; answer with
    /// [`Answer::Proposed`] and the same `req`.
    Propose {
        /// Request number, echoed in the answer.
        req: u64,
        /// The proposal to build on.
        parent: Digest,
    },
    /// Is the proposal `digest`, built on `parent`, valid? Answer with
    /// [`Answer::Verified`].
    Verify {
        /// Request number.
        req: u64,
        /// The parent the engine expects.
        parent: Digest,
        /// The proposal.
        digest: Digest,
    },
    /// A quorum notarized `digest`: show it.
    Notarized {
        /// The proposal.
        digest: Digest,
    },
    /// `digest` (and every ancestor) is final: commit it.
    Finalized {
        /// The proposal.
        digest: Digest,
        /// The engine's certificate, stored in the log.
        proof: Vec<u8>,
    },
    /// A view ended without a notarized proposal.
    Nullified {
        /// The engine's view number.
        view: u64,
    },
}

/// The core's answer to an [`Order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The proposal built for a [`Order::Propose`], or none (the core is
    /// not ready: it lacks the parent or has diverged).
    Proposed {
        /// The request.
        req: u64,
        /// The proposal's digest.
        digest: Option<Digest>,
    },
    /// The verdict on an [`Order::Verify`].
    Verified {
        /// The request.
        req: u64,
        /// Valid or not.
        valid: bool,
    },
    /// No verdict on an [`Order::Verify`]: the core was asked too long
    /// after the proposal's time to vouch that it was on time (a member
    /// catching up on views decided without it), yet nothing shows it is
    /// wrong. The engine takes it as an ignored proposal: no vote either
    /// way.
    Abstained {
        /// The request.
        req: u64,
    },
}

/// An ordering engine, as the core's driver sees it: it takes the core's
/// answers and hands out its orders.
pub trait Engine {
    /// An answer of the core.
    fn answer(&mut self, answer: Answer);
    /// The next order, if one is ready.
    fn poll_order(&mut self) -> Option<Order>;
}

/// The engine of a group of one: every proposal is notarized and
/// finalized as soon as it is made.
#[derive(Debug)]
pub struct Solo {
    orders: VecDeque<Order>,
    req: u64,
    parent: Digest,
}

impl Solo {
    /// An engine whose first proposal builds on `head`.
    pub fn new(head: Digest) -> Solo {
        Solo {
            orders: VecDeque::from([Order::Propose {
                req: 0,
                parent: head,
            }]),
            req: 0,
            parent: head,
        }
    }
}

impl Engine for Solo {
    fn answer(&mut self, answer: Answer) {
        let Answer::Proposed { req, digest } = answer else {
            return;
        };
        if req != self.req {
            return;
        }
        self.req += 1;
        match digest {
            Some(digest) => {
                self.parent = digest;
                self.orders.push_back(Order::Notarized { digest });
                self.orders.push_back(Order::Finalized {
                    digest,
                    proof: Vec::new(),
                });
                self.orders.push_back(Order::Propose {
                    req: self.req,
                    parent: digest,
                });
            }
            // Not ready (the proposal did not execute, which the core has
            // logged): ask again; the core answers at the next deadline.
            None => self.orders.push_back(Order::Propose {
                req: self.req,
                parent: self.parent,
            }),
        }
    }

    fn poll_order(&mut self) -> Option<Order> {
        self.orders.pop_front()
    }
}
