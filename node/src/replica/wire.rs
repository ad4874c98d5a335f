//! What replicas, players' nodes and the log exchange: signed inputs, the
//! proposal (the batch that travels beside consensus), checkpoints, and the
//! messages between the members of a replica group.
//!
//! Every message is a versioned envelope (`MTRM`, postcard) decoded with
//! the check-then-parse rule: the size is checked before parsing, and the
//! bytes must re-encode to themselves (postcard accepts overlong varints;
//! we hash only canonical bytes).

use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};

use metatopia_sim::input::{Input, InputKind};
use metatopia_sim::physics::Envelope;
use metatopia_sim::snapshot::{self, DecodeError};
use metatopia_sim::{Batch, PlayerId, RegionId};

/// A blake3 digest: of a proposal, a manifest, a state.
pub type Digest = [u8; 32];

/// Magic of a replica message.
pub const MESSAGE_MAGIC: [u8; 4] = *b"MTRM";

/// Magic of a proposal's own encoding (digest and log).
pub const PROPOSAL_MAGIC: [u8; 4] = *b"MTPP";

/// Largest message a replica decodes (a snapshot for a resync is the
/// largest; everything else is far smaller).
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest proposal: inputs and the script sources they attach.
pub const PROPOSAL_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Most inputs in one forwarded bundle.
pub const FORWARD_INPUTS_MAX: usize = 4096;

/// Most border envelopes one region sends one neighbour in one tick.
pub const BORDER_ENVELOPES_MAX: usize = 4096;

/// Largest border set (a neighbour's envelopes of one tick), encoded.
pub const BORDER_SET_BYTES_MAX: usize = 4 * 1024 * 1024;

/// An ed25519 signature (64 bytes), serialised as a byte string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

impl std::fmt::Debug for Sig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sig({})", metatopia_sim::hex(&self.0[..8]))
    }
}

impl Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sig, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Sig, E> {
                let bytes: [u8; 64] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Sig(bytes))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signer's id is not an ed25519 public key.
    #[error("player id {0} is not an ed25519 public key")]
    BadKey(PlayerId),
    /// The signature does not match the signed bytes.
    #[error("bad signature by {0}")]
    BadSignature(PlayerId),
}

/// Checks a signature by the rules every replica uses (ZIP 215; ADR 0015).
fn verify(signer: PlayerId, bytes: &[u8], sig: &Sig) -> Result<(), SignatureError> {
    super::verify::verify(signer, bytes, sig)
}

/// The player id of a signing key (its public key).
pub fn player_of(key: &SigningKey) -> PlayerId {
    PlayerId(key.verifying_key().to_bytes())
}

/// A player's input, signed by the player's key over (region, player, seq,
/// kind): valid in one region only, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInput {
    /// The input; `input.player` is the signer.
    pub input: Input,
    /// The signature over [`SignedInput::signed_bytes`].
    pub sig: Sig,
}

impl SignedInput {
    /// The bytes a player signs.
    pub fn signed_bytes(region: RegionId, input: &Input) -> Vec<u8> {
        let mut out = Vec::new();
        SignedInput::write_signed_bytes(region, input, &mut out);
        out
    }

    /// Appends the bytes a player signs to `out` (a buffer reused across
    /// many inputs).
    pub fn write_signed_bytes(region: RegionId, input: &Input, out: &mut Vec<u8>) {
        out.extend_from_slice(b"metatopia input v1\0");
        postcard::to_io(&(region, input), out).expect("postcard encoding into a Vec cannot fail");
    }

    /// Signs `kind` as input `seq` of the key's player in `region`.
    pub fn sign(key: &SigningKey, region: RegionId, seq: u64, kind: InputKind) -> SignedInput {
        let input = Input {
            player: player_of(key),
            seq,
            kind,
        };
        let sig = Sig(key
            .sign(&SignedInput::signed_bytes(region, &input))
            .to_bytes());
        SignedInput { input, sig }
    }

    /// Checks the signature for `region` (ZIP 215 rules; many at once:
    /// [`super::verify::verify_inputs`], which decides the same).
    pub fn verify(&self, region: RegionId) -> Result<(), SignatureError> {
        verify(
            self.input.player,
            &SignedInput::signed_bytes(region, &self.input),
            &self.sig,
        )
    }
}

/// The batch of one tick as the primary proposes it: consensus orders its
/// digest, and the proposal itself travels beside it. It carries everything
/// its execution reads: the inputs (signed), the time, and the source of
/// every script it attaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The region.
    pub region: RegionId,
    /// The tick it executes: its parent's tick + 1 (the first tick after
    /// genesis is the genesis state's next tick).
    pub tick: u64,
    /// Digest of the parent proposal (the genesis digest for the first).
    pub parent: Digest,
    /// Sim time of the tick, proposed by the primary.
    pub time_ms: u64,
    /// The inputs, in the order the sim applies them.
    pub inputs: Vec<SignedInput>,
    /// The sources of the scripts that `AttachScript` inputs here attach,
    /// sorted by hash, each once.
    pub sources: Vec<String>,
    /// Border envelopes from neighbour regions, sent at the end of the
    /// previous tick (`tick - 1`), each set certified by its sending
    /// group: at most one per neighbour, sorted by sending region.
    pub border: Vec<BorderCert>,
}

impl Proposal {
    /// The canonical bytes the digest covers (and the log stores).
    pub fn encode(&self) -> Vec<u8> {
        snapshot::encode(PROPOSAL_MAGIC, self)
    }

    /// Its digest.
    pub fn digest(&self) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(b"metatopia proposal v1\0");
        h.update(&self.encode());
        *h.finalize().as_bytes()
    }

    /// The border envelopes it delivers (the region tick's inbox), in the
    /// order the certificates carry them.
    pub fn inbox(&self) -> Vec<Envelope> {
        self.border
            .iter()
            .flat_map(|c| c.set.envelopes.iter().cloned())
            .collect()
    }

    /// The sim batch it executes.
    pub fn batch(&self) -> Batch {
        Batch {
            tick: self.tick,
            time_ms: self.time_ms,
            inputs: self.inputs.iter().map(|s| s.input.clone()).collect(),
        }
    }
}

/// A replica's signed statement of its region hash after a finalized tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The region.
    pub region: RegionId,
    /// The tick executed (the hash is the state after it).
    pub tick: u64,
    /// The region hash after it.
    pub hash: Digest,
    /// The replica (its node key).
    pub member: PlayerId,
    /// Its signature.
    pub sig: Sig,
}

impl Checkpoint {
    fn signed_bytes(region: RegionId, tick: u64, hash: &Digest) -> Vec<u8> {
        let mut out = b"metatopia checkpoint v1\0".to_vec();
        postcard::to_io(&(region, tick, hash), &mut out)
            .expect("postcard encoding into a Vec cannot fail");
        out
    }

    /// Signs a checkpoint.
    pub fn sign(key: &SigningKey, region: RegionId, tick: u64, hash: Digest) -> Checkpoint {
        let sig = Sig(key
            .sign(&Checkpoint::signed_bytes(region, tick, &hash))
            .to_bytes());
        Checkpoint {
            region,
            tick,
            hash,
            member: player_of(key),
            sig,
        }
    }

    /// Checks the signature.
    pub fn verify(&self) -> Result<(), SignatureError> {
        verify(
            self.member,
            &Checkpoint::signed_bytes(self.region, self.tick, &self.hash),
            &self.sig,
        )
    }
}

/// What one region sends one neighbour at the end of one tick: every
/// border envelope `Region::tick` put in its outbox for that neighbour (an
/// empty set too, so the neighbour's primary knows it need not wait).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorderSet {
    /// The sending region.
    pub from: RegionId,
    /// The receiving region.
    pub to: RegionId,
    /// The tick at whose end the envelopes were sent.
    pub tick: u64,
    /// The envelopes, in the sender's outbox order.
    pub envelopes: Vec<Envelope>,
}

/// Why a border set or its certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BorderSetError {
    /// Not from a configured neighbour.
    #[error("border set from region {0}, which is not a neighbour")]
    NotNeighbour(RegionId),
    /// Addressed to another region.
    #[error("border set addressed to region {0}")]
    Misaddressed(RegionId),
    /// An envelope's routing differs from its set's, or it is invalid.
    #[error("border envelope {index}: {why}")]
    Envelope {
        /// Its index in the set.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// Too many envelopes or bytes.
    #[error("border set too large: {0}")]
    TooLarge(String),
    /// The signer is not a member of the sending group.
    #[error("border set signed by {0}, not a member of the sending group")]
    NotMember(PlayerId),
    /// A signature does not verify.
    #[error("border set: {0}")]
    Signature(#[from] SignatureError),
    /// Too few distinct valid signatures, or not sorted and distinct.
    #[error("border certificate: {0}")]
    Certificate(String),
    /// For another tick than the proposal's previous one.
    #[error("border set of tick {got} in the proposal of tick {tick}")]
    Tick {
        /// The set's tick.
        got: u64,
        /// The proposal's tick.
        tick: u64,
    },
}

impl BorderSet {
    /// blake3 over the encoded envelopes (what members sign, beside the
    /// routing).
    pub fn envelopes_hash(&self) -> Digest {
        let mut buf = b"metatopia border envelopes v1\0".to_vec();
        postcard::to_io(&self.envelopes, &mut buf)
            .expect("postcard encoding into a Vec cannot fail");
        *blake3::hash(&buf).as_bytes()
    }

    /// The bytes a member of the sending group signs: (from, to, tick,
    /// blake3 of the encoded envelopes).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = b"metatopia border set v1\0".to_vec();
        postcard::to_io(
            &(self.from, self.to, self.tick, self.envelopes_hash()),
            &mut out,
        )
        .expect("postcard encoding into a Vec cannot fail");
        out
    }

    /// A member's signature of this set.
    pub fn sign(&self, key: &SigningKey) -> BorderSig {
        BorderSig {
            member: player_of(key),
            sig: Sig(key.sign(&self.signed_bytes()).to_bytes()),
        }
    }

    /// Checks shape: addressed to `to`, every envelope routed as the set
    /// (from, to, tick) and valid, within the bounds.
    pub fn check(&self, to: RegionId) -> Result<(), BorderSetError> {
        if self.to != to {
            return Err(BorderSetError::Misaddressed(self.to));
        }
        if self.envelopes.len() > BORDER_ENVELOPES_MAX {
            return Err(BorderSetError::TooLarge(format!(
                "{} envelopes (limit {BORDER_ENVELOPES_MAX})",
                self.envelopes.len()
            )));
        }
        for (index, e) in self.envelopes.iter().enumerate() {
            if e.from != self.from || e.to != self.to || e.tick != self.tick {
                return Err(BorderSetError::Envelope {
                    index,
                    why: format!(
                        "routed {} -> {} at tick {}, the set {} -> {} at tick {}",
                        e.from, e.to, e.tick, self.from, self.to, self.tick
                    ),
                });
            }
            e.validate().map_err(|e| BorderSetError::Envelope {
                index,
                why: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// One member's signature of a [`BorderSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorderSig {
    /// The member (its node key).
    pub member: PlayerId,
    /// Its signature over [`BorderSet::signed_bytes`].
    pub sig: Sig,
}

impl BorderSig {
    /// Checks the signature over `set`.
    pub fn verify(&self, set: &BorderSet) -> Result<(), SignatureError> {
        verify(self.member, &set.signed_bytes(), &self.sig)
    }
}

/// A border set certified by its sending group: signatures of at least
/// f + 1 distinct members (so at least one honest member executed the
/// tick and got these envelopes), sorted by member key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorderCert {
    /// The set.
    pub set: BorderSet,
    /// The signatures, strictly increasing by member.
    pub sigs: Vec<BorderSig>,
}

impl BorderCert {
    /// Checks the certificate against the sending group's members (`n =
    /// 3f + 1`): the set's shape for `to`, then at least f + 1 distinct
    /// members' valid signatures, sorted, none from outside the group.
    pub fn verify(&self, to: RegionId, members: &[PlayerId]) -> Result<(), BorderSetError> {
        self.set.check(to)?;
        let need = members.len().saturating_sub(1) / 3 + 1;
        if self.sigs.len() < need || self.sigs.len() > members.len() {
            return Err(BorderSetError::Certificate(format!(
                "{} signatures, need {need} of {}",
                self.sigs.len(),
                members.len()
            )));
        }
        if !self.sigs.windows(2).all(|w| w[0].member < w[1].member) {
            return Err(BorderSetError::Certificate(
                "signatures not sorted by member, or repeated".into(),
            ));
        }
        if let Some(s) = self.sigs.iter().find(|s| !members.contains(&s.member)) {
            return Err(BorderSetError::NotMember(s.member));
        }
        let bytes = self.set.signed_bytes();
        for s in &self.sigs {
            verify(s.member, &bytes, &s.sig)?;
        }
        Ok(())
    }
}

/// A message between replicas (and from a player's node to a replica).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Inputs received from players, forwarded to the other members so that
    /// whoever is primary orders them.
    Inputs(Vec<SignedInput>),
    /// A proposal, shipped beside the consensus that orders its digest.
    Proposal(Proposal),
    /// Asks for the proposal with this digest (a replica that missed it).
    Fetch(Digest),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
    /// Asks for the sender's latest finalized snapshot (resync).
    SnapshotRequest,
    /// A finalized snapshot: the region after `tick`, whose last proposal
    /// has digest `digest`.
    Snapshot {
        /// The tick executed last.
        tick: u64,
        /// Digest of the proposal of that tick.
        digest: Digest,
        /// The region snapshot (`physics::Region::snapshot`).
        bytes: Vec<u8>,
    },
    /// An observer (a node that is not a member) asks to follow the
    /// region: every finalized proposal and checkpoint from now on, for a
    /// lease of [`FOLLOW_LEASE_MS`]; sent again before the lease ends.
    Follow {
        /// Also send the latest checkpoint snapshot, the signed checkpoint
        /// of its tick and the finalized proposals since (joining, or
        /// resyncing after a gap).
        snapshot: bool,
    },
    /// A member of a neighbour region's group sends the border envelopes
    /// its region produced at the end of a finalized tick, with its own
    /// signature; f + 1 of them make a [`BorderCert`].
    Border {
        /// The envelopes.
        set: BorderSet,
        /// The sending member's signature.
        sig: BorderSig,
    },
    /// A finalized proposal, for observers. `proof` is the engine's
    /// finalization certificate; empty when a later proposal's certificate
    /// implies this one.
    Finalized {
        /// The proposal.
        proposal: Proposal,
        /// The certificate (encoded `Finalization`), or empty.
        proof: Vec<u8>,
    },
}

/// How long a member keeps sending to an observer after its last
/// [`Message::Follow`].
pub const FOLLOW_LEASE_MS: u64 = 10_000;

impl Message {
    /// The canonical bytes.
    pub fn encode(&self) -> Vec<u8> {
        snapshot::encode(MESSAGE_MAGIC, self)
    }

    /// Decodes a message, refusing oversized, malformed and non-canonical
    /// bytes and structurally impossible contents.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let msg: Message = snapshot::decode(MESSAGE_MAGIC, bytes)?;
        match &msg {
            Message::Inputs(v) if v.len() > FORWARD_INPUTS_MAX => {
                return Err(DecodeError::Malformed(format!(
                    "{} forwarded inputs (limit {FORWARD_INPUTS_MAX})",
                    v.len()
                )));
            }
            Message::Border { set, .. } if set.envelopes.len() > BORDER_ENVELOPES_MAX => {
                return Err(DecodeError::Malformed(format!(
                    "{} border envelopes (limit {BORDER_ENVELOPES_MAX})",
                    set.envelopes.len()
                )));
            }
            Message::Border { .. } if bytes.len() > BORDER_SET_BYTES_MAX => {
                return Err(DecodeError::TooLarge(bytes.len()));
            }
            Message::Proposal(_) | Message::Finalized { .. }
                if bytes.len() > PROPOSAL_BYTES_MAX =>
            {
                return Err(DecodeError::TooLarge(bytes.len()));
            }
            _ => {}
        }
        Ok(msg)
    }
}
