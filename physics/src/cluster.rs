//! [`Cluster`]: several regions in one process, exchanging border
//! envelopes as encoded bytes, as they will over the network.
//!
//! Every tick each region runs once (in id order; the result does not
//! depend on the order, since envelopes sent at tick `t` are applied at
//! `t + 1`). Envelopes are encoded after sending and decoded (and
//! validated) before delivery, so the codec is exercised on every message.

use std::collections::BTreeMap;

use metatopia_sim::input::{Batch, Input};
use metatopia_sim::physics::{Envelope, decode_envelope, encode_envelope};
use metatopia_sim::snapshot::{self, DecodeError};
use metatopia_sim::state::Settings;
use metatopia_sim::step::StepError;
use metatopia_sim::{Fx, PlayerId, RegionId, ScriptHost, Vec3};

use crate::region::{Aabb, Region, RegionConfig, RegionReport};

/// First bytes of a cluster snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"MTPC";

/// Regions side by side, with their envelopes in flight.
#[derive(Debug)]
pub struct Cluster {
    regions: BTreeMap<RegionId, Region>,
    /// Encoded envelopes sent at the end of the last tick.
    mail: Vec<Vec<u8>>,
    /// Milliseconds of sim time per tick.
    tick_ms: u64,
    /// Envelope bytes delivered so far.
    pub bytes_sent: u64,
}

/// What one cluster tick did.
#[derive(Debug)]
pub struct ClusterReport {
    /// Each region's report.
    pub regions: BTreeMap<RegionId, RegionReport>,
    /// Envelopes that failed to decode, with the error.
    pub undecodable: Vec<String>,
    /// blake3 over the region hashes in id order.
    pub hash: [u8; 32],
}

impl Cluster {
    /// A cluster of the given regions.
    pub fn new(regions: Vec<Region>) -> Cluster {
        let tick_ms = regions.first().map_or(50, |r| {
            1000 / u64::from(r.config().space.tick_rate_hz.max(1))
        });
        Cluster {
            regions: regions.into_iter().map(|r| (r.id(), r)).collect(),
            mail: Vec::new(),
            tick_ms,
            bytes_sent: 0,
        }
    }

    /// `nx` × `ny` regions of `size` metres (a square, `height` tall), ids
    /// `1..`, row by row, each neighbour of every region it touches
    /// (corners included). `tune` adjusts each config.
    pub fn grid(
        nx: u32,
        ny: u32,
        size: i32,
        height: i32,
        settings: &Settings,
        founders: &[PlayerId],
        tune: impl Fn(&mut RegionConfig),
    ) -> Cluster {
        let mut boxes = Vec::new();
        for j in 0..ny {
            for i in 0..nx {
                let id = RegionId(1 + j * nx + i);
                let min = Vec3::new(
                    Fx::from_int(i as i32 * size),
                    Fx::from_int(j as i32 * size),
                    Fx::ZERO,
                );
                let max = Vec3::new(
                    Fx::from_int((i as i32 + 1) * size),
                    Fx::from_int((j as i32 + 1) * size),
                    Fx::from_int(height),
                );
                boxes.push((id, Aabb { min, max }));
            }
        }
        let regions = boxes
            .iter()
            .map(|(id, b)| {
                let mut cfg = RegionConfig::new(*id, *b);
                cfg.neighbours = boxes
                    .iter()
                    .filter(|(o, ob)| o != id && b.touches(ob))
                    .copied()
                    .collect();
                tune(&mut cfg);
                Region::new(cfg, settings.clone(), founders)
            })
            .collect();
        Cluster::new(regions)
    }

    /// A snapshot of every region and of the envelopes in flight.
    pub fn snapshot(&self) -> Vec<u8> {
        let regions: Vec<Vec<u8>> = self.regions.values().map(|r| r.snapshot()).collect();
        snapshot::encode(SNAPSHOT_MAGIC, &(regions, &self.mail, self.tick_ms))
    }

    /// A cluster from [`Cluster::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Cluster, DecodeError> {
        let (regions, mail, tick_ms): (Vec<Vec<u8>>, Vec<Vec<u8>>, u64) =
            snapshot::decode(SNAPSHOT_MAGIC, bytes)?;
        let regions = regions
            .iter()
            .map(|b| Region::restore(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cluster {
            regions: regions.into_iter().map(|r| (r.id(), r)).collect(),
            mail,
            tick_ms,
            bytes_sent: 0,
        })
    }

    /// Drops envelopes in flight (sent at the end of the last tick) for
    /// which `keep` is false, as a network that loses or delays them past
    /// their tick would; returns how many were dropped. Undecodable bytes
    /// are kept (delivery reports them).
    pub fn retain_mail(&mut self, mut keep: impl FnMut(&Envelope) -> bool) -> usize {
        let before = self.mail.len();
        self.mail
            .retain(|bytes| decode_envelope(bytes).map_or(true, |env| keep(&env)));
        before - self.mail.len()
    }

    /// The regions, by id.
    pub fn regions(&self) -> &BTreeMap<RegionId, Region> {
        &self.regions
    }

    /// The region `id`.
    pub fn region(&self, id: RegionId) -> Option<&Region> {
        self.regions.get(&id)
    }

    /// The next tick.
    pub fn tick_number(&self) -> u64 {
        self.regions.values().next().map_or(0, |r| r.tick_number())
    }

    /// Runs one tick everywhere: `inputs` per region (others get none).
    pub fn tick(
        &mut self,
        inputs: &BTreeMap<RegionId, Vec<Input>>,
        host: &dyn ScriptHost,
    ) -> Result<ClusterReport, StepError> {
        let mut undecodable = Vec::new();
        let mut inboxes: BTreeMap<RegionId, Vec<Envelope>> = BTreeMap::new();
        for bytes in std::mem::take(&mut self.mail) {
            self.bytes_sent += bytes.len() as u64;
            match decode_envelope(&bytes) {
                Ok(env) => inboxes.entry(env.to).or_default().push(env),
                Err(e) => undecodable.push(e.to_string()),
            }
        }
        let t = self.tick_number();
        let mut reports = BTreeMap::new();
        let mut hasher = blake3::Hasher::new();
        for (id, region) in self.regions.iter_mut() {
            let batch = Batch {
                tick: t,
                time_ms: t * self.tick_ms,
                inputs: inputs.get(id).cloned().unwrap_or_default(),
            };
            let inbox = inboxes.remove(id).unwrap_or_default();
            let report = region.tick(&batch, host, &inbox)?;
            for env in &report.outbox {
                self.mail.push(encode_envelope(env));
            }
            hasher.update(&report.hash);
            reports.insert(*id, report);
        }
        Ok(ClusterReport {
            regions: reports,
            undecodable,
            hash: *hasher.finalize().as_bytes(),
        })
    }
}
