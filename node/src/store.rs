//! Persistence in redb: the genesis snapshot, the batch log with the state
//! hash after every tick (checkpoints), and periodic snapshots.
//!
//! The live world is a [`Region`]: the main sim and its physics world. A
//! snapshot is the region's (`MTPR`: sim state, the whole rapier world,
//! border state, pending physics events), and the hash in the log is the
//! region hash (sim hash and physics digest), so replay and recovery check
//! physics too.
//!
//! Each tick is one write transaction (batch + checkpoint, plus a snapshot
//! every `snapshot_every` ticks), committed with fsync before anyone is told
//! the tick happened. A `kill -9` therefore loses at most the tick in
//! flight, which nobody had been told about. Every record is a versioned
//! envelope; reading checks it, and recovery checks every hash.

use std::path::Path;

use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

use metatopia_physics::Region;
use metatopia_physics::region::RegionReport;
use metatopia_sim::snapshot::{self, DecodeError};
use metatopia_sim::{ScriptHost, hex};

use crate::replica::{Digest, Manifest, Proposal};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");

/// Magic of a log record. Version 3 (border traffic between groups): the
/// proposal carries neighbours' certified border envelopes. Version 2
/// (replication): the record holds the signed proposal and its
/// finalization certificate; version 1 held a bare batch.
pub const LOG_MAGIC: [u8; 4] = *b"MTL3";

/// Magic of version 2 log records (proposals without border envelopes),
/// recognised only to refuse them with a clear message.
const LOG_MAGIC_V2: [u8; 4] = *b"MTL2";

/// Magic of the stored manifest.
pub const MANIFEST_MAGIC: [u8; 4] = *b"MTMF";

/// One finalized tick: the agreed proposal, the region hash after it, and
/// the consensus certificate that finalized it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The proposal (signed inputs, time, carried sources).
    pub proposal: Proposal,
    /// The region hash after executing it.
    pub hash: [u8; 32],
    /// The finalization certificate (empty in a group of one, and when a
    /// later tick's finalization implies this one).
    pub proof: Vec<u8>,
}

impl LogRecord {
    /// The tick it executed.
    pub fn tick(&self) -> u64 {
        self.proposal.tick
    }
}

/// Why the store failed or refused its contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
    #[error("database: {0}")]
    Db(String),
    /// Another process has the database open.
    #[error("the database at {0} is in use by another process (is a node running?)")]
    InUse(String),
    /// A stored record does not decode.
    #[error("corrupt {what} at tick {tick}: {source}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Its tick.
        tick: u64,
        /// The decode error.
        source: DecodeError,
    },
    /// Re-execution does not give the recorded hash.
    #[error("state hash mismatch at tick {tick}: log says {expected}, replay gives {got}")]
    Mismatch {
        /// The tick.
        tick: u64,
        /// Recorded hash (hex).
        expected: String,
        /// Computed hash (hex).
        got: String,
    },
    /// The log has a gap or a batch that does not execute.
    #[error("log broken at tick {tick}: {message}")]
    Broken {
        /// The tick.
        tick: u64,
        /// What is wrong.
        message: String,
    },
    /// The store has no world yet.
    #[error("no world in this data directory")]
    Empty,
    /// A write to a store opened read-only.
    #[error("the database is open read-only")]
    ReadOnly,
    /// Opened read-only, the database needs the repair a killed node
    /// leaves to its next start, which would write.
    #[error(
        "the database at {0} was not closed cleanly (a node was killed?); start its node once, \
         or run `metatopia replay --data DIR`, to repair it, then try again"
    )]
    NeedsRepair(String),
}

/// A stored snapshot: `blake3(region snapshot) || region snapshot`. The
/// region hash covers the quantized physics state, not every float of the
/// rapier world (contact caches, broad phase), so the checksum is what
/// catches a damaged byte there.
fn encode_snapshot(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + body.len());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(body);
    out
}

/// A region from stored snapshot bytes, as a store error naming `tick`.
fn decode_region(bytes: &[u8], tick: u64) -> Result<Region, StoreError> {
    let corrupt = |source| StoreError::Corrupt {
        what: "snapshot",
        tick,
        source,
    };
    if bytes.len() < 32 {
        return Err(corrupt(DecodeError::Truncated(bytes.len())));
    }
    let (sum, body) = bytes.split_at(32);
    if blake3::hash(body).as_bytes() != sum {
        return Err(corrupt(DecodeError::Malformed(
            "snapshot checksum does not match".into(),
        )));
    }
    Region::restore(body).map_err(corrupt)
}

/// The log record stored at `tick`, or why it does not decode.
fn decode_record(tick: u64, bytes: &[u8]) -> Result<LogRecord, StoreError> {
    snapshot::decode(LOG_MAGIC, bytes).map_err(|source| StoreError::Corrupt {
        what: "log record",
        tick,
        source,
    })
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The database of one data directory.
#[derive(Debug)]
pub struct Store {
    db: Db,
}

/// The database, opened for writing or only for reading.
enum Db {
    Write(Database),
    Read(ReadOnlyDatabase),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Write(d) => f.debug_tuple("Write").field(d).finish(),
            // redb's ReadOnlyDatabase has no Debug.
            Db::Read(_) => f.write_str("Read"),
        }
    }
}

/// A tick's state rebuilt from a data directory ([`Store::rebuild`]).
#[derive(Debug)]
pub struct Rebuilt {
    /// The region after the ticks asked for.
    pub region: Region,
    /// The snapshot it started from.
    pub snapshot_tick: u64,
    /// Snapshots skipped on the way (corrupt, or not matching the log).
    pub skipped_snapshots: Vec<(u64, String)>,
    /// Ticks whose replay gave another hash than the one logged:
    /// `(tick, logged, replayed)`. The replica computed them differently
    /// from its own inputs then, or this build does now.
    pub mismatches: Vec<(u64, [u8; 32], [u8; 32])>,
}

/// What recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The snapshot tick recovery started from.
    pub snapshot_tick: u64,
    /// Batches re-executed after it.
    pub replayed: u64,
    /// Snapshots skipped because they were corrupt or did not match.
    pub skipped_snapshots: Vec<(u64, String)>,
    /// Log records before the snapshot that do not decode (the state is
    /// fine, but a replay from genesis will fail there).
    pub corrupt_records: Vec<(u64, String)>,
}

impl Store {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let database = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            other => db(other),
        })?;
        let txn = database.begin_write().map_err(db)?;
        txn.open_table(META).map_err(db)?;
        txn.open_table(LOG).map_err(db)?;
        txn.open_table(SNAPSHOTS).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(Store {
            db: Db::Write(database),
        })
    }

    /// Opens an existing database only for reading: nothing is written,
    /// and a database a running node holds is refused at once
    /// ([`StoreError::InUse`]), as is one that needs repair.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.is_file() {
            return Err(StoreError::Empty);
        }
        let database = ReadOnlyDatabase::open(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            redb::DatabaseError::RepairAborted => {
                StoreError::NeedsRepair(path.display().to_string())
            }
            other => db(other),
        })?;
        Ok(Store {
            db: Db::Read(database),
        })
    }

    fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        match &self.db {
            Db::Write(d) => d.begin_read(),
            Db::Read(d) => d.begin_read(),
        }
        .map_err(db)
    }

    fn begin_write(&self) -> Result<WriteTransaction, StoreError> {
        match &self.db {
            Db::Write(d) => d.begin_write().map_err(db),
            Db::Read(_) => Err(StoreError::ReadOnly),
        }
    }

    /// The region hash logged after each tick: `(tick, hash after
    /// executing it)`, ascending.
    pub fn hashes(&self) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG).map_err(db)?;
        let mut out = Vec::new();
        for item in log.iter().map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let tick = k.value();
            let record = decode_record(tick, v.value())?;
            out.push((tick, record.hash));
        }
        Ok(out)
    }

    /// The region after `ticks` ticks executed: the newest snapshot at or
    /// before it that verifies, then the log's batches up to it. Unlike
    /// [`Store::replay_from`] a replayed hash that differs from the logged
    /// one is not an error but reported ([`Rebuilt::mismatches`]): a desync
    /// report wants the state either way.
    pub fn rebuild(&self, ticks: u64, host: &dyn ScriptHost) -> Result<Rebuilt, StoreError> {
        if self.genesis_hash()?.is_none() {
            return Err(StoreError::Empty);
        }
        self.check_format()?;
        let mut skipped = Vec::new();
        let mut start = None;
        for tick in self.snapshot_ticks()?.into_iter().rev() {
            if tick > ticks {
                continue;
            }
            match self.verified_snapshot(tick) {
                Ok(region) => {
                    start = Some(region);
                    break;
                }
                Err(e) => skipped.push((tick, e.to_string())),
            }
        }
        let Some(mut region) = start else {
            return Err(StoreError::Broken {
                tick: 0,
                message: format!("no snapshot at or before tick {ticks} verifies: {skipped:?}"),
            });
        };
        let snapshot_tick = region.tick_number();
        let mut mismatches = Vec::new();
        for tick in snapshot_tick..ticks {
            let record = self.record(tick)?.ok_or_else(|| StoreError::Broken {
                tick,
                message: "no log record".into(),
            })?;
            let report = region
                .tick(&record.proposal.batch(), host, &record.proposal.inbox())
                .map_err(|e| StoreError::Broken {
                    tick,
                    message: e.to_string(),
                })?;
            if report.hash != record.hash {
                mismatches.push((tick, record.hash, report.hash));
            }
        }
        Ok(Rebuilt {
            region,
            snapshot_tick,
            skipped_snapshots: skipped,
            mismatches,
        })
    }

    /// The genesis state hash, if a world exists.
    pub fn genesis_hash(&self) -> Result<Option<[u8; 32]>, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(db)?;
        let Some(v) = meta.get("genesis_hash").map_err(db)? else {
            return Ok(None);
        };
        let bytes = v.value();
        let hash: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Broken {
            tick: 0,
            message: "genesis hash is not 32 bytes".into(),
        })?;
        Ok(Some(hash))
    }

    /// Writes a new world: its manifest and genesis region (snapshot at
    /// tick 0).
    pub fn init(&self, manifest: &Manifest) -> Result<Region, StoreError> {
        self.init_with(manifest, manifest.genesis())
    }

    /// Writes a new world with `genesis` as its genesis region (the
    /// manifest's, placed in the world: [`crate::world::Placement`]).
    pub fn init_with(&self, manifest: &Manifest, genesis: Region) -> Result<Region, StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(db)?;
            meta.insert("genesis_hash", &genesis.hash()[..])
                .map_err(db)?;
            meta.insert("manifest", &snapshot::encode(MANIFEST_MAGIC, manifest)[..])
                .map_err(db)?;
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(db)?;
            snaps
                .insert(
                    genesis.tick_number(),
                    &encode_snapshot(&genesis.snapshot())[..],
                )
                .map_err(db)?;
        }
        txn.commit().map_err(db)?;
        Ok(genesis)
    }

    /// Sequence numbers of this node's player below this value may have
    /// been signed by an earlier run (0 when none were reserved).
    pub fn seq_reserved(&self) -> Result<u64, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(db)?;
        let Some(v) = meta.get("seq_reserved").map_err(db)? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = v.value().try_into().map_err(|_| StoreError::Broken {
            tick: 0,
            message: "seq_reserved is not 8 bytes".into(),
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Durably records that sequence numbers below `upto` may be signed
    /// (see `world::Signer`).
    pub fn reserve_seq(&self, upto: u64) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META).map_err(db)?;
            meta.insert("seq_reserved", &upto.to_le_bytes()[..])
                .map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    /// The region manifest, if a world exists.
    pub fn manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META).map_err(db)?;
        let Some(v) = meta.get("manifest").map_err(db)? else {
            return Ok(None);
        };
        snapshot::decode(MANIFEST_MAGIC, v.value())
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                what: "manifest",
                tick: 0,
                source,
            })
    }

    /// Digest of the last logged proposal (the genesis digest of `manifest`
    /// when the log is empty): what the next proposal builds on.
    pub fn head_digest(&self, manifest: &Manifest) -> Result<Digest, StoreError> {
        match self.last_tick()? {
            Some(t) => Ok(self
                .record(t)?
                .ok_or_else(|| StoreError::Broken {
                    tick: t,
                    message: "last record vanished".into(),
                })?
                .proposal
                .digest()),
            None => Ok(manifest.genesis_digest()),
        }
    }

    /// Appends one finalized tick, with a snapshot of the region after it
    /// (`Region::snapshot` bytes) when one is due.
    pub fn append(&self, record: &LogRecord, snapshot: Option<&[u8]>) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut log = txn.open_table(LOG).map_err(db)?;
            log.insert(record.tick(), &snapshot::encode(LOG_MAGIC, record)[..])
                .map_err(db)?;
            if let Some(bytes) = snapshot {
                let mut snaps = txn.open_table(SNAPSHOTS).map_err(db)?;
                snaps
                    .insert(record.tick() + 1, &encode_snapshot(bytes)[..])
                    .map_err(db)?;
            }
        }
        txn.commit().map_err(db)
    }

    /// Makes a snapshot the group vouched for (after this replica
    /// diverged) the start of recovery: the record of `tick` gets the
    /// group's region `hash`, the snapshot is stored after it, and every
    /// later record and snapshot (this replica's diverged ones) is removed;
    /// the ticks after come again from the group. The records before keep
    /// what this replica computed, so `metatopia replay` from genesis names
    /// the tick where it diverged.
    pub fn adopt(&self, tick: u64, hash: [u8; 32], snapshot: &[u8]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        {
            let mut log = txn.open_table(LOG).map_err(db)?;
            let Some(mut record) = log
                .get(tick)
                .map_err(db)?
                .map(|v| decode_record(tick, v.value()))
                .transpose()?
            else {
                return Err(StoreError::Broken {
                    tick,
                    message: "no log record for the adopted snapshot's tick".into(),
                });
            };
            record.hash = hash;
            log.insert(tick, &snapshot::encode(LOG_MAGIC, &record)[..])
                .map_err(db)?;
            log.retain_in(tick + 1.., |_, _| false).map_err(db)?;
            let mut snaps = txn.open_table(SNAPSHOTS).map_err(db)?;
            snaps.retain_in(tick + 1.., |_, _| false).map_err(db)?;
            snaps
                .insert(tick + 1, &encode_snapshot(snapshot)[..])
                .map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    /// The log record of tick `tick`.
    pub fn record(&self, tick: u64) -> Result<Option<LogRecord>, StoreError> {
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG).map_err(db)?;
        let Some(v) = log.get(tick).map_err(db)? else {
            return Ok(None);
        };
        decode_record(tick, v.value()).map(Some)
    }

    /// The ticks that have snapshots, ascending.
    pub fn snapshot_ticks(&self) -> Result<Vec<u64>, StoreError> {
        let txn = self.begin_read()?;
        let snaps = txn.open_table(SNAPSHOTS).map_err(db)?;
        let mut out = Vec::new();
        for item in snaps.iter().map_err(db)? {
            let (k, _) = item.map_err(db)?;
            out.push(k.value());
        }
        Ok(out)
    }

    /// The snapshot bytes at `tick`.
    pub fn snapshot_bytes(&self, tick: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let snaps = txn.open_table(SNAPSHOTS).map_err(db)?;
        Ok(snaps.get(tick).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// The last logged tick, if any.
    pub fn last_tick(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG).map_err(db)?;
        Ok(log.last().map_err(db)?.map(|(k, _)| k.value()))
    }

    /// The hash a state with `state_tick` ticks executed must have.
    fn expected_hash(&self, state_tick: u64) -> Result<[u8; 32], StoreError> {
        if state_tick == 0 {
            return self.genesis_hash()?.ok_or(StoreError::Empty);
        }
        let record = self
            .record(state_tick - 1)?
            .ok_or_else(|| StoreError::Broken {
                tick: state_tick - 1,
                message: "no log record for a snapshot's tick".into(),
            })?;
        Ok(record.hash)
    }

    /// The verified region of the snapshot at `tick` (its checksum, and
    /// its hash against the log).
    pub fn verified_snapshot(&self, tick: u64) -> Result<Region, StoreError> {
        let bytes = self
            .snapshot_bytes(tick)?
            .ok_or_else(|| StoreError::Broken {
                tick,
                message: "snapshot missing".into(),
            })?;
        let region = decode_region(&bytes, tick)?;
        let expected = self.expected_hash(tick)?;
        let got = region.hash();
        if region.tick_number() != tick || got != expected {
            return Err(StoreError::Mismatch {
                tick,
                expected: hex(&expected),
                got: hex(&got),
            });
        }
        Ok(region)
    }

    /// Re-executes the log from `region` to the end, checking every
    /// checkpoint. `on_tick` sees each verified tick: the region after it,
    /// its log record and what the tick did (its border outbox, say).
    pub fn replay_from(
        &self,
        region: &mut Region,
        host: &dyn ScriptHost,
        mut on_tick: impl FnMut(&Region, &LogRecord, &RegionReport),
    ) -> Result<u64, StoreError> {
        let from = region.tick_number();
        let manifest = self.manifest()?.ok_or(StoreError::Empty)?;
        // The log is a hash chain: each proposal names its parent's digest.
        let mut parent = match from {
            0 => manifest.genesis_digest(),
            _ => self
                .record(from - 1)?
                .ok_or_else(|| StoreError::Broken {
                    tick: from - 1,
                    message: "no log record before the snapshot".into(),
                })?
                .proposal
                .digest(),
        };
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG).map_err(db)?;
        let mut count = 0;
        for item in log.range(from..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let tick = k.value();
            let record = decode_record(tick, v.value())?;
            if tick != region.tick_number() || record.tick() != tick {
                return Err(StoreError::Broken {
                    tick,
                    message: format!("expected tick {}", region.tick_number()),
                });
            }
            if record.proposal.region != manifest.region {
                return Err(StoreError::Broken {
                    tick,
                    message: format!("a proposal for region {}", record.proposal.region),
                });
            }
            if record.proposal.parent != parent {
                return Err(StoreError::Broken {
                    tick,
                    message: "the proposal does not follow the previous tick's".into(),
                });
            }
            parent = record.proposal.digest();
            let report = region
                .tick(&record.proposal.batch(), host, &record.proposal.inbox())
                .map_err(|e| StoreError::Broken {
                    tick,
                    message: e.to_string(),
                })?;
            if report.hash != record.hash {
                return Err(StoreError::Mismatch {
                    tick,
                    expected: hex(&record.hash),
                    got: hex(&report.hash),
                });
            }
            count += 1;
            on_tick(region, &record, &report);
        }
        Ok(count)
    }

    /// Rebuilds the latest state: the newest snapshot that verifies, then
    /// the log after it, every hash checked. Corrupt snapshots are skipped
    /// (and reported); a corrupt log is an error naming the tick.
    pub fn recover(&self, host: &dyn ScriptHost) -> Result<(Region, Recovery), StoreError> {
        if self.genesis_hash()?.is_none() {
            return Err(StoreError::Empty);
        }
        self.check_format()?;
        let mut skipped = Vec::new();
        for tick in self.snapshot_ticks()?.into_iter().rev() {
            match self.verified_snapshot(tick) {
                Ok(region) => {
                    let mut region = region;
                    let replayed = self.replay_from(&mut region, host, |_, _, _| {})?;
                    return Ok((
                        region,
                        Recovery {
                            snapshot_tick: tick,
                            replayed,
                            skipped_snapshots: skipped,
                            corrupt_records: self.scan_log(tick)?,
                        },
                    ));
                }
                Err(e) => skipped.push((tick, e.to_string())),
            }
        }
        Err(StoreError::Broken {
            tick: 0,
            message: format!("no snapshot verifies: {skipped:?}"),
        })
    }

    /// Decodes every log record below `end` and lists those that fail, or
    /// that break the sequence of ticks.
    pub fn scan_log(&self, end: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let manifest = self.manifest()?.ok_or(StoreError::Empty)?;
        let txn = self.begin_read()?;
        let log = txn.open_table(LOG).map_err(db)?;
        let mut bad = Vec::new();
        let mut expect = 0;
        let mut parent = Some(manifest.genesis_digest());
        for item in log.range(..end).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let tick = k.value();
            if tick != expect {
                bad.push((expect, format!("missing (next record is tick {tick})")));
                parent = None;
            }
            expect = tick + 1;
            match snapshot::decode::<LogRecord>(LOG_MAGIC, v.value()) {
                Ok(r) if r.tick() != tick => {
                    bad.push((tick, format!("holds the batch of tick {}", r.tick())));
                    parent = None;
                }
                Ok(r) if r.proposal.region != manifest.region => {
                    bad.push((tick, format!("a proposal for region {}", r.proposal.region)));
                    parent = None;
                }
                Ok(r) => {
                    if parent.is_some_and(|p| p != r.proposal.parent) {
                        bad.push((
                            tick,
                            "the proposal does not follow the previous tick's".into(),
                        ));
                    }
                    parent = Some(r.proposal.digest());
                }
                Err(e) => {
                    bad.push((tick, e.to_string()));
                    parent = None;
                }
            }
        }
        Ok(bad)
    }

    /// Full verification from genesis: every batch re-executed (main sim and
    /// physics), every checkpoint and every later snapshot compared.
    /// Returns the final region.
    pub fn replay_all(&self, host: &dyn ScriptHost) -> Result<(Region, u64), StoreError> {
        self.check_format()?;
        let mut region = self.verified_snapshot(0)?;
        let snapshot_ticks = self.snapshot_ticks()?;
        let mut snapshot_error = None;
        let count = self.replay_from(&mut region, host, |r, _, _| {
            let tick = r.tick_number();
            if snapshot_error.is_none() && snapshot_ticks.binary_search(&tick).is_ok() {
                match self.snapshot_bytes(tick) {
                    Ok(Some(bytes)) => match decode_region(&bytes, tick) {
                        Ok(s) if s.hash() == r.hash() => {}
                        Ok(s) => {
                            snapshot_error = Some(StoreError::Mismatch {
                                tick,
                                expected: hex(&r.hash()),
                                got: hex(&s.hash()),
                            })
                        }
                        Err(e) => snapshot_error = Some(e),
                    },
                    Ok(None) => {}
                    Err(e) => snapshot_error = Some(e),
                }
            }
        })?;
        if let Some(e) = snapshot_error {
            return Err(e);
        }
        Ok((region, count))
    }

    /// Refuses a data directory written before the live world stepped
    /// physics (its snapshots are bare sim states, its hashes sim hashes).
    fn check_format(&self) -> Result<(), StoreError> {
        match self.snapshot_bytes(0)? {
            Some(bytes) if bytes.starts_with(&snapshot::MAGIC) => Err(StoreError::Broken {
                tick: 0,
                message: "this world was written by an older metatopia without physics in the \
                          live world (sim-only snapshots); move the data directory away to start \
                          a new world"
                    .into(),
            }),
            _ if self
                .first_log_bytes()?
                .is_some_and(|b| b.starts_with(&LOG_MAGIC_V2)) =>
            {
                Err(StoreError::Broken {
                    tick: 0,
                    message: "this world was written by an older metatopia whose log records \
                              carry no border envelopes (log format MTL2, this build writes \
                              MTL3); move the data directory away to start a new world"
                        .into(),
                })
            }
            _ if self.manifest()?.is_none() => Err(StoreError::Broken {
                tick: 0,
                message: "this world was written by an older metatopia without replication (no \
                          region manifest, unsigned inputs in the log); move the data directory \
                          away to start a new world"
                    .into(),
            }),
            _ => Ok(()),
        }
    }

    /// The raw bytes of the first log record, if any.
    fn first_log_bytes(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.begin_read()?;
        let log = match txn.open_table(LOG) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db(e)),
        };
        let first = log.first().map_err(db)?;
        Ok(first.map(|(_, v)| v.value().to_vec()))
    }

    /// Overwrites raw bytes of a record (for corruption tests and repair
    /// tools): `table` is `"log"` or `"snapshots"`.
    pub fn write_raw(&self, table: &str, tick: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let def = match table {
            "log" => LOG,
            "snapshots" => SNAPSHOTS,
            other => {
                return Err(StoreError::Db(format!("no table {other:?}")));
            }
        };
        let txn = self.begin_write()?;
        {
            let mut t = txn.open_table(def).map_err(db)?;
            t.insert(tick, bytes).map_err(db)?;
        }
        txn.commit().map_err(db)
    }

    /// Raw bytes of a record (`"log"` or `"snapshots"`).
    pub fn read_raw(&self, table: &str, tick: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match table {
            "snapshots" => self.snapshot_bytes(tick),
            "log" => {
                let txn = self.begin_read()?;
                let log = txn.open_table(LOG).map_err(db)?;
                Ok(log.get(tick).map_err(db)?.map(|v| v.value().to_vec()))
            }
            other => Err(StoreError::Db(format!("no table {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use metatopia_sim::NoScripts;

    use super::*;

    #[test]
    fn a_log_written_before_border_envelopes_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (_, manifest) = crate::replica::group::test_group();
        let store = Store::open(&dir.path().join("world.redb")).expect("opens");
        store.init(&manifest).expect("a new world");
        // A version 2 record: same shape of envelope, older magic.
        let mut old = snapshot::encode(LOG_MAGIC, &0u8);
        old[..4].copy_from_slice(&LOG_MAGIC_V2);
        store.write_raw("log", 0, &old).expect("written");
        let err = store.recover(&NoScripts).expect_err("refused").to_string();
        assert!(
            err.contains("MTL2") && err.contains("move the data directory away"),
            "{err}"
        );
    }
}
