//! The content store (Lspace): script sources and assets (meshes,
//! textures, sounds, any bytes) in one place, keyed by blake3.
//!
//! ```text
//! DIR/content/<blake3 hex>          one blob, its bytes exactly
//! DIR/content/.tmp-<n>              an upload or write in progress
//! DIR/content/uploads/<player hex>  hashes the player added (one a line)
//! ```
//!
//! A blob is written to a temporary file, fsynced, renamed into place and
//! the directory fsynced, so a crash leaves the whole blob or none. Reading
//! checks the hash: a damaged file is never served or run (it is logged
//! and counted as `content_corrupt`); uploading the same bytes again
//! repairs it. Data directories from before the store kept sources in
//! `DIR/scripts/<hex>.lua`; [`migrate_scripts`] moves them here when the
//! directory is opened.
//!
//! Uploads from clients (`PUT /api/assets`, `PUT /api/scripts`) are capped
//! by `[limits]` in node.toml (ADR 0012): bytes per blob, bytes each
//! player has added, bytes in the whole store (the node hosts one
//! region). Over a cap nothing is stored and the answer names the cap and
//! the numbers. Sources that arrive in a committed proposal from the
//! replica group are stored without caps: the tick cannot run without them.
//!
//! Layout:
//! - [`range`]: the `Range` header decoder.
//! - [`http`]: `PUT /api/assets`, `GET /assets/{hash}`.
//! - [`gc`]: `metatopia content gc`, what stays and what goes.
//! - [`cli`]: `metatopia asset put|get` and `metatopia content gc`.
//! - [`wire`]: `/metatopia/content/1`'s frames and the receiver's checks.
//! - [`peer`]: serving blobs to peers and fetching missing ones.
//! - [`follow`]: fetching every asset the region's elements reference.

pub mod cli;
pub mod follow;
pub mod gc;
pub mod http;
pub mod peer;
pub mod range;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metatopia_sim::{PlayerId, hex, unhex32};
use tracing::{error, warn};

/// A blob's name: blake3 of its bytes.
pub type Hash = [u8; 32];

/// Most verified files remembered (see [`Store::open_verified`]); past it
/// the memory is cleared and files are hashed again on their next read.
const VERIFIED_MAX: usize = 65_536;

/// Most uploads streaming at once (each holds a temporary file of up to
/// `content_blob_bytes_max`); the next is refused with 503 and counted.
pub const UPLOADS_MAX: usize = 8;

/// Size caps on uploads (from `[limits]` in node.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Bytes in one blob (`content_blob_bytes_max`).
    pub blob_bytes_max: u64,
    /// Bytes one player may have added to the store (`content_player_bytes_max`).
    pub player_bytes_max: u64,
    /// Bytes in the whole store (`content_store_bytes_max`).
    pub store_bytes_max: u64,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            blob_bytes_max: 32 << 20,
            player_bytes_max: 256 << 20,
            store_bytes_max: 4 << 30,
        }
    }
}

/// Why an upload was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The blob is larger than `content_blob_bytes_max`.
    #[error("the blob is {bytes} bytes, over limits.content_blob_bytes_max = {max} bytes")]
    BlobTooLarge {
        /// Its size (or, when refused while reading, the bytes read so far).
        bytes: u64,
        /// The cap.
        max: u64,
    },
    /// The player's stored uploads would pass `content_player_bytes_max`.
    #[error(
        "you have {used} bytes stored; {bytes} more would pass limits.content_player_bytes_max = {max} bytes"
    )]
    PlayerFull {
        /// Bytes the player's uploads hold now.
        used: u64,
        /// The blob's size.
        bytes: u64,
        /// The cap.
        max: u64,
    },
    /// The store would pass `content_store_bytes_max`.
    #[error(
        "the store holds {used} bytes; {bytes} more would pass limits.content_store_bytes_max = {max} bytes"
    )]
    StoreFull {
        /// Bytes stored now.
        used: u64,
        /// The blob's size.
        bytes: u64,
        /// The cap.
        max: u64,
    },
    /// The bytes do not hash to what the uploader said they would.
    #[error("the bytes hash to {got}, not the expected {expected}")]
    HashMismatch {
        /// The hash given (hex).
        expected: String,
        /// The hash of the bytes (hex).
        got: String,
    },
    /// Reading or writing failed.
    #[error("content store: {0}")]
    Io(#[from] std::io::Error),
}

impl PutError {
    /// The `[limits]` key a refusal names, for the JSON answer and metrics.
    pub fn cap(&self) -> Option<&'static str> {
        match self {
            PutError::BlobTooLarge { .. } => Some("content_blob_bytes_max"),
            PutError::PlayerFull { .. } => Some("content_player_bytes_max"),
            PutError::StoreFull { .. } => Some("content_store_bytes_max"),
            _ => None,
        }
    }
}

/// A stored blob that does not hash to its name.
#[derive(Debug, thiserror::Error)]
#[error("blob {name} is corrupt on disk: its bytes hash to {got}; not served")]
pub struct Corrupt {
    /// Its name (hex).
    pub name: String,
    /// What its bytes hash to (hex).
    pub got: String,
}

/// What the store counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Uploads refused at `content_blob_bytes_max`.
    pub refused_blob: AtomicU64,
    /// Uploads refused at `content_player_bytes_max`.
    pub refused_player: AtomicU64,
    /// Uploads refused at `content_store_bytes_max`.
    pub refused_store: AtomicU64,
    /// Uploads refused because [`UPLOADS_MAX`] were in progress.
    pub refused_busy: AtomicU64,
    /// Uploads refused because the bytes did not match `?hash=`.
    pub refused_hash: AtomicU64,
    /// Reads that found a blob not matching its name.
    pub corrupt: AtomicU64,
    /// Bytes of new blobs stored since start.
    pub stored_bytes: AtomicU64,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Put {
    /// The blob's hash.
    pub hash: Hash,
    /// Its size.
    pub bytes: u64,
    /// Whether it was new to the store (false: it was already there, and
    /// cost nothing).
    pub new: bool,
}

/// Sizes, kept in memory.
#[derive(Debug, Default)]
struct Totals {
    bytes: u64,
    blobs: u64,
    /// Per player: the hashes they added and their total size, loaded
    /// from the ledger on first use.
    players: BTreeMap<PlayerId, (BTreeSet<Hash>, u64)>,
}

/// Identity of a file version: a file replaced or written in place gets
/// another stamp and is hashed again before it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
    modified: Option<std::time::SystemTime>,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Stamp {
            len: m.len(),
            #[cfg(unix)]
            ino: m.ino(),
            #[cfg(unix)]
            ctime: (m.ctime(), m.ctime_nsec()),
            modified: m.modified().ok(),
        }
    }
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    caps: Caps,
    totals: Mutex<Totals>,
    verified: Mutex<HashMap<Hash, Stamp>>,
    counters: Counters,
    tmp_seq: AtomicU64,
    uploads: Arc<tokio::sync::Semaphore>,
}

/// The content store of one data directory (cheap to clone; clones share
/// their sizes and counters).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Whether `name` is a blob's file name (64 lowercase hex digits).
pub fn blob_name(name: &str) -> Option<Hash> {
    (name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| unhex32(name))
        .flatten()
}

/// blake3 of `bytes`.
pub fn hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these leaves consistent data (plain counters
    // and maps), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Moves the sources of an older data directory (`DIR/scripts/<hex>.lua`)
/// into the store (`DIR/content/<hex>`), each checked against its name; a
/// file that does not match is left where it is, with a warning. Returns
/// how many moved. Idempotent, and safe while another process reads.
pub fn migrate_scripts(data_dir: &Path) -> std::io::Result<usize> {
    let old = data_dir.join("scripts");
    let Ok(entries) = std::fs::read_dir(&old) else {
        return Ok(0);
    };
    let dir = data_dir.join("content");
    std::fs::create_dir_all(&dir)?;
    let mut moved = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(h) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".lua"))
            .and_then(blob_name)
        else {
            continue;
        };
        let bytes = std::fs::read(entry.path())?;
        if hash(&bytes) != h {
            warn!(file = %entry.path().display(), "script source does not match its name; not migrated");
            continue;
        }
        match std::fs::rename(entry.path(), dir.join(hex(&h))) {
            Ok(()) => moved += 1,
            // Another process moved it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if moved > 0 {
        sync_dir(&dir)?;
        sync_dir(&old)?;
    }
    // Gone once empty (a damaged file left behind keeps it).
    let _ = std::fs::remove_dir(&old);
    Ok(moved)
}

impl Store {
    /// The store of a data directory, with `caps` on uploads; sizes are
    /// counted from the files there.
    pub fn open(data_dir: &Path, caps: Caps) -> std::io::Result<Store> {
        let dir = data_dir.join("content");
        std::fs::create_dir_all(&dir)?;
        let mut totals = Totals::default();
        for (_, len) in list(&dir)? {
            totals.bytes += len;
            totals.blobs += 1;
        }
        Ok(Store {
            inner: Arc::new(Inner {
                dir,
                caps,
                totals: Mutex::new(totals),
                verified: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                tmp_seq: AtomicU64::new(0),
                uploads: Arc::new(tokio::sync::Semaphore::new(UPLOADS_MAX)),
            }),
        })
    }

    /// The caps on uploads.
    pub fn caps(&self) -> Caps {
        self.inner.caps
    }

    /// A place among the [`UPLOADS_MAX`] uploads in progress, held until
    /// dropped; `None` (counted) when all are taken.
    pub fn upload_slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.inner.uploads.clone().try_acquire_owned().ok();
        if slot.is_none() {
            self.inner
                .counters
                .refused_busy
                .fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// What the store counts.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Blobs and bytes stored.
    pub fn size(&self) -> (u64, u64) {
        let t = lock(&self.inner.totals);
        (t.blobs, t.bytes)
    }

    /// Where the blob `h` lives.
    pub fn path(&self, h: &Hash) -> PathBuf {
        self.inner.dir.join(hex(h))
    }

    /// A fresh temporary file's path in the store's directory.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.inner
            .dir
            .join(format!(".tmp-{}-{n}", std::process::id()))
    }

    /// The blob's bytes, if stored and intact (read whole: for script
    /// sources and the CLI; HTTP streams with [`Store::open_verified`]).
    pub fn get(&self, h: &Hash) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.path(h)).ok()?;
        let got = hash(&bytes);
        if got != *h {
            self.corrupt(h, &got);
            return None;
        }
        Some(bytes)
    }

    fn corrupt(&self, h: &Hash, got: &Hash) -> Corrupt {
        self.inner.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.verified).remove(h);
        error!(blob = %hex(h), got = %hex(got), "content blob corrupt on disk; not served");
        Corrupt {
            name: hex(h),
            got: hex(got),
        }
    }

    /// The blob opened for reading and its length, once its bytes are
    /// known to hash to its name: hashed on the first read of each file
    /// version (inode, size, change time), then trusted until the file
    /// changes. `Ok(None)`: not stored. Blocking.
    pub fn open_verified(&self, h: &Hash) -> Result<Option<(std::fs::File, u64)>, Corrupt> {
        let mut file = match std::fs::File::open(self.path(h)) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let Ok(meta) = file.metadata() else {
            return Ok(None);
        };
        let stamp = Stamp::of(&meta);
        if lock(&self.inner.verified).get(h) == Some(&stamp) {
            return Ok(Some((file, stamp.len)));
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                }
                Err(_) => return Ok(None),
            }
        }
        let got = *hasher.finalize().as_bytes();
        if got != *h {
            return Err(self.corrupt(h, &got));
        }
        {
            let mut v = lock(&self.inner.verified);
            if v.len() >= VERIFIED_MAX {
                v.clear();
            }
            v.insert(*h, stamp);
        }
        use std::io::Seek as _;
        if file.seek(std::io::SeekFrom::Start(0)).is_err() {
            return Ok(None);
        }
        Ok(Some((file, stamp.len)))
    }

    /// Stores `bytes` without caps (sources carried by a committed
    /// proposal); idempotent. Blocking.
    pub fn put(&self, bytes: &[u8]) -> std::io::Result<Hash> {
        let tmp = self.temp_path();
        write_file(&tmp, bytes)?;
        match self.commit_file(&tmp, hash(bytes), bytes.len() as u64, None) {
            Ok(put) => Ok(put.hash),
            Err(PutError::Io(e)) => Err(e),
            // Without a player no cap applies; kept total for the types.
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }

    /// Stores `bytes` uploaded by `player`, within the caps. Blocking.
    pub fn upload(
        &self,
        player: PlayerId,
        bytes: &[u8],
        expected: Option<Hash>,
    ) -> Result<Put, PutError> {
        self.check_blob(bytes.len() as u64)?;
        let h = hash(bytes);
        self.check_expected(expected, &h)?;
        let tmp = self.temp_path();
        write_file(&tmp, bytes)?;
        self.commit_file(&tmp, h, bytes.len() as u64, Some(player))
    }

    /// Refuses a blob of `bytes` over `content_blob_bytes_max` (counted).
    pub fn check_blob(&self, bytes: u64) -> Result<(), PutError> {
        let max = self.inner.caps.blob_bytes_max;
        if bytes > max {
            self.inner
                .counters
                .refused_blob
                .fetch_add(1, Ordering::Relaxed);
            return Err(PutError::BlobTooLarge { bytes, max });
        }
        Ok(())
    }

    /// Refuses bytes hashing to `got` when `expected` is another hash (counted).
    pub fn check_expected(&self, expected: Option<Hash>, got: &Hash) -> Result<(), PutError> {
        match expected {
            Some(e) if e != *got => {
                self.inner
                    .counters
                    .refused_hash
                    .fetch_add(1, Ordering::Relaxed);
                Err(PutError::HashMismatch {
                    expected: hex(&e),
                    got: hex(got),
                })
            }
            _ => Ok(()),
        }
    }

    /// Moves a complete temporary file (already fsynced) holding `len`
    /// bytes that hash to `h` into place, charging `player` (if any)
    /// within the caps. The temporary file is gone afterwards, whatever
    /// happens. Blocking.
    pub fn commit_file(
        &self,
        tmp: &Path,
        h: Hash,
        len: u64,
        player: Option<PlayerId>,
    ) -> Result<Put, PutError> {
        let result = self.commit_inner(tmp, h, len, player);
        let _ = std::fs::remove_file(tmp);
        result
    }

    fn commit_inner(
        &self,
        tmp: &Path,
        h: Hash,
        len: u64,
        player: Option<PlayerId>,
    ) -> Result<Put, PutError> {
        let path = self.path(&h);
        // One writer at a time: the caps are checked and the sizes updated
        // together with the rename.
        let mut totals = lock(&self.inner.totals);
        if let Ok(m) = std::fs::metadata(&path) {
            if m.len() == len && matches!(self.open_verified(&h), Ok(Some(_))) {
                // Already stored: free; its age starts again (gc's grace).
                if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                    let _ = f.set_modified(std::time::SystemTime::now());
                }
                return Ok(Put {
                    hash: h,
                    bytes: len,
                    new: false,
                });
            }
            // A damaged copy: replaced below (its size leaves the totals).
            warn!(blob = %hex(&h), "replacing a corrupt blob with uploaded bytes");
            totals.bytes = totals.bytes.saturating_sub(m.len());
            totals.blobs = totals.blobs.saturating_sub(1);
        }
        let caps = self.inner.caps;
        let c = &self.inner.counters;
        if let Some(p) = player {
            let used = self.player_usage(&mut totals, p)?;
            if used.saturating_add(len) > caps.player_bytes_max {
                c.refused_player.fetch_add(1, Ordering::Relaxed);
                return Err(PutError::PlayerFull {
                    used,
                    bytes: len,
                    max: caps.player_bytes_max,
                });
            }
            if totals.bytes.saturating_add(len) > caps.store_bytes_max {
                c.refused_store.fetch_add(1, Ordering::Relaxed);
                return Err(PutError::StoreFull {
                    used: totals.bytes,
                    bytes: len,
                    max: caps.store_bytes_max,
                });
            }
        }
        std::fs::rename(tmp, &path)?;
        sync_dir(&self.inner.dir)?;
        totals.bytes += len;
        totals.blobs += 1;
        c.stored_bytes.fetch_add(len, Ordering::Relaxed);
        if let Some(p) = player {
            self.charge(&mut totals, p, h, len)?;
        }
        Ok(Put {
            hash: h,
            bytes: len,
            new: true,
        })
    }

    fn ledger_path(&self, p: &PlayerId) -> PathBuf {
        self.inner.dir.join("uploads").join(hex(&p.0))
    }

    /// Bytes of the blobs `p` added that are still stored.
    fn player_usage(&self, totals: &mut Totals, p: PlayerId) -> std::io::Result<u64> {
        if let Some((_, used)) = totals.players.get(&p) {
            return Ok(*used);
        }
        let mut set = BTreeSet::new();
        let mut used = 0;
        for h in read_ledger(&self.ledger_path(&p))? {
            if let Ok(m) = std::fs::metadata(self.path(&h))
                && set.insert(h)
            {
                used += m.len();
            }
        }
        totals.players.insert(p, (set, used));
        Ok(used)
    }

    fn charge(&self, totals: &mut Totals, p: PlayerId, h: Hash, len: u64) -> std::io::Result<()> {
        self.player_usage(totals, p)?;
        let ledger = self.ledger_path(&p);
        if let Some(parent) = ledger.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&ledger)?;
        writeln!(f, "{}", hex(&h))?;
        f.sync_data()?;
        if let Some((set, used)) = totals.players.get_mut(&p)
            && set.insert(h)
        {
            *used += len;
        }
        Ok(())
    }

    /// Bytes `p` has stored (their uploads still in the store).
    pub fn player_bytes(&self, p: PlayerId) -> std::io::Result<u64> {
        let mut totals = lock(&self.inner.totals);
        self.player_usage(&mut totals, p)
    }

    /// The directory of blobs.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// The blobs in `dir`: name and size.
fn list(dir: &Path) -> std::io::Result<Vec<(Hash, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(h) = entry.file_name().to_str().and_then(blob_name) {
            out.push((h, entry.metadata()?.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// The hashes in a player's ledger (lines that are not hashes are skipped).
fn read_ledger(path: &Path) -> std::io::Result<Vec<Hash>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().filter_map(|l| blob_name(l.trim())).collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(blob: u64, player: u64, store: u64) -> Caps {
        Caps {
            blob_bytes_max: blob,
            player_bytes_max: player,
            store_bytes_max: store,
        }
    }

    #[test]
    fn put_get_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Caps::default()).unwrap();
        let h = s.put(b"bytes").unwrap();
        assert_eq!(h, hash(b"bytes"));
        assert_eq!(s.put(b"bytes").unwrap(), h);
        assert_eq!(s.size(), (1, 5));
        assert_eq!(s.get(&h).unwrap(), b"bytes");
        let (_, len) = s.open_verified(&h).unwrap().unwrap();
        assert_eq!(len, 5);
        std::fs::write(s.path(&h), b"bytez").unwrap();
        assert!(s.get(&h).is_none());
        assert!(s.open_verified(&h).is_err());
        assert_eq!(s.counters().corrupt.load(Ordering::Relaxed), 2);
        // Uploading the bytes again repairs it.
        let put = s.upload(PlayerId([1; 32]), b"bytes", None).unwrap();
        assert!(put.new);
        assert!(s.open_verified(&h).unwrap().is_some());
        assert_eq!(s.size(), (1, 5));
        let leftovers: Vec<_> = std::fs::read_dir(s.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn caps_refuse_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), caps(10, 15, 25)).unwrap();
        let (a, b) = (PlayerId([1; 32]), PlayerId([2; 32]));
        assert!(matches!(
            s.upload(a, &[0; 11], None),
            Err(PutError::BlobTooLarge { bytes: 11, max: 10 })
        ));
        s.upload(a, &[1; 10], None).unwrap();
        // The same bytes again cost nothing.
        assert!(!s.upload(a, &[1; 10], None).unwrap().new);
        assert!(!s.upload(b, &[1; 10], None).unwrap().new);
        assert!(matches!(
            s.upload(a, &[2; 6], None),
            Err(PutError::PlayerFull {
                used: 10,
                bytes: 6,
                max: 15
            })
        ));
        s.upload(b, &[3; 10], None).unwrap();
        assert!(matches!(
            s.upload(PlayerId([3; 32]), &[4; 6], None),
            Err(PutError::StoreFull {
                used: 20,
                bytes: 6,
                max: 25
            })
        ));
        assert!(matches!(
            s.upload(b, b"x", Some([0; 32])),
            Err(PutError::HashMismatch { .. })
        ));
        assert_eq!(s.size(), (2, 20));
        assert_eq!(list(s.dir()).unwrap().len(), 2);
        // Usage survives a restart (from the ledger).
        let s2 = Store::open(dir.path(), caps(10, 15, 25)).unwrap();
        assert_eq!(s2.player_bytes(a).unwrap(), 10);
        assert_eq!(s2.player_bytes(b).unwrap(), 10);
    }

    #[test]
    fn migrates_old_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("scripts");
        std::fs::create_dir_all(&old).unwrap();
        let h = hash(b"-- old\n");
        std::fs::write(old.join(format!("{}.lua", hex(&h))), b"-- old\n").unwrap();
        let bad = hash(b"-- other\n");
        std::fs::write(old.join(format!("{}.lua", hex(&bad))), b"-- tampered\n").unwrap();
        assert_eq!(migrate_scripts(dir.path()).unwrap(), 1);
        assert_eq!(migrate_scripts(dir.path()).unwrap(), 0);
        let s = Store::open(dir.path(), Caps::default()).unwrap();
        assert_eq!(s.get(&h).unwrap(), b"-- old\n");
        assert!(s.get(&bad).is_none());
        assert!(
            old.exists(),
            "the damaged file stays for a human to look at"
        );
    }
}
