//! Garbage collection of the content store: `metatopia content gc`.
//!
//! The rule. A blob stays when the region may still need it:
//! - a script source attached to an element, or an asset an element
//!   references (mesh, texture), in the oldest snapshot the store keeps,
//!   or in the newest one that verifies;
//! - a source that an input in the log since the oldest snapshot attaches
//!   (`AttachScript`), an asset one sets (`SetAssets`), or a source that a
//!   logged proposal carries.
//!
//! Replay starts at a kept snapshot and re-executes the log after it, so
//! these are every source a replay or recovery can load; the current state
//! is the newest snapshot plus the log after it, so every source attached
//! now is among them. Any other blob (an asset no state refers to yet, a
//! source replaced and never attached) goes once its file is older than
//! the grace period (default one day), which leaves time to attach what was
//! just uploaded; uploading the same bytes again restarts its age. Leftover
//! temporary files older than the grace period go too.
//!
//! It runs with the node stopped: it reads the world database, which the
//! running node holds open, and takes the data directory's lock so that no
//! node starts meanwhile.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use metatopia_sim::hex;
use metatopia_sim::input::InputKind;

use super::{Hash, blob_name, list, read_ledger};
use crate::datadir::DataDir;

/// Why a blob stayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The region's snapshots or log refer to it.
    Referenced,
    /// Unreferenced, but younger than the grace period.
    Young,
}

/// What a collection did (or would do, in a dry run).
#[derive(Debug, Default)]
pub struct Report {
    /// Blobs removed: hash and size.
    pub removed: Vec<(Hash, u64)>,
    /// Blobs kept: hash, size and why.
    pub kept: Vec<(Hash, u64, Kept)>,
    /// Temporary files removed.
    pub temps_removed: usize,
}

/// Every blob the region may still need (the rule above).
pub fn referenced(store: &crate::store::Store) -> Result<BTreeSet<Hash>> {
    let ticks = store.snapshot_ticks()?;
    let Some(&oldest) = ticks.first() else {
        bail!("the world has no snapshot; nothing to compare against");
    };
    let mut out = BTreeSet::new();
    let mut attached = |region: &metatopia_physics::Region| {
        for e in region.sim().state().elements.values() {
            if let Some(slot) = &e.script {
                out.insert(slot.source);
            }
            out.extend(e.assets.hashes());
        }
    };
    let first = store
        .verified_snapshot(oldest)
        .with_context(|| format!("reading the oldest snapshot (tick {oldest})"))?;
    attached(&first);
    if let Some(region) = ticks
        .iter()
        .rev()
        .filter(|&&t| t != oldest)
        .find_map(|&t| store.verified_snapshot(t).ok())
    {
        attached(&region);
    }
    let last = store.last_tick()?.unwrap_or(0);
    for tick in oldest..=last {
        let Some(record) = store
            .record(tick)
            .with_context(|| format!("reading the log at tick {tick}"))?
        else {
            continue;
        };
        for signed in &record.proposal.inputs {
            match &signed.input.kind {
                InputKind::AttachScript { source, .. } => {
                    out.insert(*source);
                }
                InputKind::SetAssets { mesh, texture, .. } => {
                    out.extend(mesh.iter().chain(texture));
                }
                _ => {}
            }
        }
        for text in &record.proposal.sources {
            out.insert(super::hash(text.as_bytes()));
        }
    }
    Ok(out)
}

/// Collects the content store of the data directory at `path` (its node
/// stopped): removes what the rule lets go and is older than `grace`.
/// With `dry_run`, removes nothing and reports what it would remove.
pub fn collect(path: &Path, grace: Duration, dry_run: bool) -> Result<Report> {
    let dir = DataDir::open(path)?;
    let Ok(_lock) = dir.lock()? else {
        bail!(
            "a node is running on {}; stop it first (gc reads the world database it holds)",
            path.display()
        );
    };
    if !dir.db_path().exists() {
        bail!(
            "{} has no world (world.redb); without it nothing can be known unreferenced, so nothing is removed",
            path.display()
        );
    }
    let store = crate::store::Store::open(&dir.db_path())?;
    if store.genesis_hash()?.is_none() {
        bail!("{} has no world; nothing removed", path.display());
    }
    let keep = referenced(&store).context("finding what the region references; nothing removed")?;
    let content = dir.path.join("content");
    std::fs::create_dir_all(&content)?;
    let now = SystemTime::now();
    let old = |p: &Path| -> bool {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= grace)
    };
    let mut report = Report::default();
    for (h, len) in list(&content)? {
        let file = content.join(hex(&h));
        if keep.contains(&h) {
            report.kept.push((h, len, Kept::Referenced));
        } else if !old(&file) {
            report.kept.push((h, len, Kept::Young));
        } else {
            if !dry_run {
                std::fs::remove_file(&file)
                    .with_context(|| format!("removing {}", file.display()))?;
            }
            report.removed.push((h, len));
        }
    }
    for entry in std::fs::read_dir(&content)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(".tmp-") && old(&entry.path()) {
            if !dry_run {
                std::fs::remove_file(entry.path())?;
            }
            report.temps_removed += 1;
        }
    }
    if !dry_run {
        std::fs::File::open(&content)?.sync_all()?;
        compact_ledgers(&content)?;
    }
    Ok(report)
}

/// Rewrites each player's upload ledger without the blobs that are gone.
fn compact_ledgers(content: &Path) -> Result<()> {
    let uploads = content.join("uploads");
    let Ok(entries) = std::fs::read_dir(&uploads) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(blob_name)
            .is_none()
        {
            continue;
        }
        let mut kept = BTreeSet::new();
        for h in read_ledger(&path)? {
            if content.join(hex(&h)).exists() {
                kept.insert(h);
            }
        }
        let text: String = kept.iter().map(|h| format!("{}\n", hex(h))).collect();
        let tmp = path.with_extension("tmp");
        super::write_file(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}
