//! Signature checks: one rule set for every ed25519 signature a replica
//! decides validity by (players' inputs, members' checkpoints, border
//! sets), checked one at a time or many at once (ADR 0015).
//!
//! The rules are ZIP 215's (as `ed25519-zebra` implements them): the
//! cofactored equation `[8][s]B = [8]R + [8][k]A`, `s` canonical, `A` and
//! `R` any encoding of a curve point. Under these rules a batch of valid
//! signatures always passes, and a batch holding an invalid one fails but
//! with probability below 2^-128 (random 128-bit coefficients, unknown to
//! a forger). So checking a batch and then, only if it fails, each of its
//! signatures alone decides every signature exactly as the single check
//! does: two replicas that batch differently (or not at all) agree.
//! ed25519-dalek's `verify_batch` would not: its batch equation is
//! cofactored and its single `verify` is not, so a signature with a
//! small-order component can pass one and fail the other.

use ed25519_zebra::batch;
use ed25519_zebra::{Error, VerificationKey, VerificationKeyBytes};
use rayon::prelude::*;

use metatopia_sim::{PlayerId, RegionId};

use super::wire::{Sig, SignatureError, SignedInput};

/// Fewer signatures than this are checked one by one: a batch's fixed
/// cost (a multiscalar multiplication set up for the base point) is not
/// worth it.
const BATCH_MIN: usize = 4;

/// Most signatures in one batch. A failed batch is re-checked one by one,
/// so a forger who mixes one bad signature into a bundle costs us at most
/// this many single checks more; and rayon needs several batches to keep
/// its threads busy.
const BATCH_MAX: usize = 256;

fn error(signer: PlayerId, e: Error) -> SignatureError {
    match e {
        Error::MalformedPublicKey => SignatureError::BadKey(signer),
        _ => SignatureError::BadSignature(signer),
    }
}

/// Checks `sig` by `signer` over `bytes` (ZIP 215 rules).
pub fn verify(signer: PlayerId, bytes: &[u8], sig: &Sig) -> Result<(), SignatureError> {
    let key = VerificationKey::try_from(VerificationKeyBytes::from(signer.0))
        .map_err(|e| error(signer, e))?;
    key.verify(&ed25519_zebra::Signature::from_bytes(&sig.0), bytes)
        .map_err(|e| error(signer, e))
}

/// Checks the signatures of `inputs` for `region`: the result of each is
/// exactly [`SignedInput::verify`]'s. Batches of up to [`BATCH_MAX`] run on
/// the rayon pool in parallel; a batch that fails is checked one by one.
pub fn verify_inputs(region: RegionId, inputs: &[&SignedInput]) -> Vec<Result<(), SignatureError>> {
    if inputs.len() < BATCH_MIN {
        return inputs.iter().map(|s| s.verify(region)).collect();
    }
    // Even batches, as many as rayon has threads (at least), none larger
    // than BATCH_MAX.
    let threads = rayon::current_num_threads().max(1);
    let batches = inputs.len().div_ceil(BATCH_MAX).max(threads);
    let size = inputs.len().div_ceil(batches).max(BATCH_MIN);
    inputs
        .par_chunks(size)
        .flat_map_iter(|chunk| verify_batch(region, chunk))
        .collect()
}

/// One batch: all pass, or each is checked alone.
fn verify_batch(region: RegionId, inputs: &[&SignedInput]) -> Vec<Result<(), SignatureError>> {
    let mut bytes = Vec::new();
    let items: Vec<batch::Item> = inputs
        .iter()
        .map(|s| {
            bytes.clear();
            SignedInput::write_signed_bytes(region, &s.input, &mut bytes);
            batch::Item::from((
                VerificationKeyBytes::from(s.input.player.0),
                ed25519_zebra::Signature::from_bytes(&s.sig.0),
                &bytes[..],
            ))
        })
        .collect();
    let mut verifier = batch::Verifier::new();
    for item in &items {
        verifier.queue(item.clone());
    }
    if verifier.verify(Coefficients::new()).is_ok() {
        return vec![Ok(()); inputs.len()];
    }
    items
        .into_iter()
        .zip(inputs)
        .map(|(item, s)| item.verify_single().map_err(|e| error(s.input.player, e)))
        .collect()
}

/// The randomness batch verification asks for (it picks the random
/// coefficients that make a forged batch fail): blake3's output stream
/// keyed from the system's randomness. Never part of any state, and never
/// known to a forger.
pub(crate) struct Coefficients(blake3::OutputReader);

impl Coefficients {
    pub(crate) fn new() -> Coefficients {
        let mut seed = [0u8; 32];
        if getrandom::fill(&mut seed).is_err() {
            // No system randomness: the clock still keeps the coefficients
            // away from a forger's guess.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&t.to_le_bytes());
        }
        Coefficients(blake3::Hasher::new_keyed(&seed).finalize_xof())
    }
}

impl rand_core_010::TryRng for Coefficients {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.0.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.0.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill(dst);
        Ok(())
    }
}

impl rand_core_010::TryCryptoRng for Coefficients {}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use metatopia_sim::input::{Input, InputKind};

    use super::*;
    use crate::replica::wire::player_of;

    fn say(key: &SigningKey, seq: u64) -> SignedInput {
        SignedInput::sign(
            key,
            RegionId(1),
            seq,
            InputKind::Say {
                text: format!("hello {seq}"),
                radius: None,
            },
        )
    }

    /// A point of order 8 (an 8-torsion point), compressed.
    const TORSION_8: [u8; 32] = [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ];

    /// An input "signed" by a small-order key: R the identity, s = 0. The
    /// cofactored equation holds for every message (ZIP 215 accepts it);
    /// the cofactorless one holds only when 8 divides the hash.
    fn small_order(seq: u64) -> SignedInput {
        let mut sig = [0u8; 64];
        sig[0] = 1;
        SignedInput {
            input: Input {
                player: PlayerId(TORSION_8),
                seq,
                kind: InputKind::Say {
                    text: "x".into(),
                    radius: None,
                },
            },
            sig: Sig(sig),
        }
    }

    /// The encoding of a y with no x on the curve (about half of them).
    fn not_a_point() -> [u8; 32] {
        (2u8..)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| VerificationKey::try_from(VerificationKeyBytes::from(*b)).is_err())
            .expect("half of all y have no x")
    }

    /// Every way an input can be wrong, among good ones.
    fn mixed() -> Vec<SignedInput> {
        let keys: Vec<SigningKey> = (1..=5u8)
            .map(|i| SigningKey::from_bytes(&[i; 32]))
            .collect();
        let mut out = Vec::new();
        for seq in 1..=40u64 {
            out.push(say(&keys[seq as usize % keys.len()], seq));
        }
        // Another input's signature.
        out[3].sig = out[4].sig;
        // Changed after signing.
        out[7].input.seq += 1000;
        // s not canonical (above the group order).
        out[11].sig.0[63] |= 0xf0;
        // R not a curve point.
        let mut bad_r = say(&keys[0], 99);
        bad_r.sig.0[..32].copy_from_slice(&not_a_point());
        out.push(bad_r);
        // The key is not a curve point.
        let mut bad_key = say(&keys[1], 98);
        bad_key.input.player = PlayerId(not_a_point());
        out.push(bad_key);
        // Small-order keys: valid by ZIP 215.
        for seq in 1..=8 {
            out.push(small_order(seq));
        }
        out
    }

    #[test]
    fn batches_decide_exactly_as_single_checks() {
        let inputs = mixed();
        let single: Vec<_> = inputs.iter().map(|s| s.verify(RegionId(1))).collect();
        let bad: Vec<usize> = (0..single.len()).filter(|i| single[*i].is_err()).collect();
        assert_eq!(bad, vec![3, 7, 11, 40, 41], "{single:?}");
        assert_eq!(
            single[41],
            Err(SignatureError::BadKey(inputs[41].input.player))
        );
        // Every batch size and position of the bad ones, alone and in a
        // larger bundle.
        let refs: Vec<&SignedInput> = inputs.iter().collect();
        assert_eq!(verify_inputs(RegionId(1), &refs), single);
        for start in 0..refs.len() {
            for len in [1, BATCH_MIN - 1, BATCH_MIN, 7, 20] {
                let end = (start + len).min(refs.len());
                assert_eq!(
                    verify_batch(RegionId(1), &refs[start..end]),
                    single[start..end],
                    "batch {start}..{end}"
                );
            }
        }
        // Another region: every signature fails but the small-order
        // ones (valid for any message).
        let other = verify_inputs(RegionId(2), &refs);
        assert!(other[..42].iter().all(Result::is_err), "{other:?}");
        assert!(other[42..].iter().all(Result::is_ok), "{other:?}");
    }

    #[test]
    fn one_rule_set_cofactored_unlike_dalek_verify() {
        // ZIP 215 accepts every small-order "signature" (single and in a
        // batch alike); ed25519-dalek's single verify, which replicas
        // used before, refuses most of them. Mixing the two could split
        // honest replicas; the rules are one now.
        let inputs: Vec<SignedInput> = (1..=16).map(small_order).collect();
        let refs: Vec<&SignedInput> = inputs.iter().collect();
        assert!(verify_inputs(RegionId(1), &refs).iter().all(Result::is_ok));
        let dalek_refuses = inputs
            .iter()
            .filter(|s| {
                let key = ed25519_dalek::VerifyingKey::from_bytes(&s.input.player.0)
                    .expect("a curve point");
                ed25519_dalek::Verifier::verify(
                    &key,
                    &SignedInput::signed_bytes(RegionId(1), &s.input),
                    &ed25519_dalek::Signature::from_bytes(&s.sig.0),
                )
                .is_err()
            })
            .count();
        assert!(dalek_refuses > 0);
        // Honest signatures pass both.
        let honest = say(&SigningKey::from_bytes(&[7; 32]), 1);
        assert_eq!(honest.verify(RegionId(1)), Ok(()));
        assert_eq!(
            player_of(&SigningKey::from_bytes(&[7; 32])),
            honest.input.player
        );
    }
}
