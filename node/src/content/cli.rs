//! `metatopia asset put|get` and `metatopia content gc`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use metatopia_sim::{hex, unhex32};

use super::gc::{self, Kept};
use crate::client;
use crate::datadir::{DataDir, default_dir};

/// `metatopia asset ...`
#[derive(Debug, Subcommand)]
pub enum AssetCmd {
    /// Upload a file to the running node's content store and print its
    /// hash (`GET /assets/HASH` serves it).
    Put {
        /// The file.
        file: PathBuf,
        /// Data directory of the running node.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Fetch an asset by hash: from the local store if it is there (and
    /// intact), else from the running node.
    Get {
        /// The hash (64 hex digits).
        hash: String,
        /// Write it here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Data directory of the running node.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// `metatopia content ...`
#[derive(Debug, Subcommand)]
pub enum ContentCmd {
    /// Remove blobs the region no longer references and that are older
    /// than the grace period (stop the node first). Prints each blob
    /// removed and kept, then a summary.
    Gc {
        /// Unreferenced blobs younger than this many seconds stay.
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
        /// Print what would be removed; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

fn error_of(r: &client::Response) -> String {
    r.json()
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| r.text())
}

/// Runs an `asset` verb.
pub fn asset(cmd: AssetCmd) -> Result<()> {
    match cmd {
        AssetCmd::Put { file, data } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let dir = DataDir::open(&data.unwrap_or_else(default_dir))?;
            let base = dir.running_node()?;
            let auth = format!("Bearer {}", dir.token()?);
            let r = client::request(
                &base,
                "PUT",
                "/api/assets",
                &[("Authorization", auth.as_str())],
                Some(&bytes),
            )?;
            if r.status != 200 {
                bail!("{}", error_of(&r));
            }
            let v = r.json()?;
            crate::outln!("{}", v["hash"].as_str().unwrap_or_default());
            eprintln!(
                "{} bytes{}",
                v["bytes"],
                if v["new"] == true {
                    ""
                } else {
                    " (already stored)"
                }
            );
            Ok(())
        }
        AssetCmd::Get { hash, output, data } => {
            let Some(h) = unhex32(&hash.to_ascii_lowercase()) else {
                bail!("{hash:?} is not a content hash (64 hex digits)");
            };
            let dir = DataDir::open(&data.unwrap_or_else(default_dir))?;
            let local = super::Store::open(&dir.path, super::Caps::default())?.get(&h);
            let bytes = match local {
                Some(b) => b,
                None => {
                    let base = dir.running_node()?;
                    let r =
                        client::request(&base, "GET", &format!("/assets/{}", hex(&h)), &[], None)?;
                    if r.status != 200 {
                        bail!("{}", error_of(&r));
                    }
                    if super::hash(&r.body) != h {
                        bail!("the node sent bytes that do not hash to {}", hex(&h));
                    }
                    r.body
                }
            };
            match output {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    match out.write_all(&bytes).and_then(|()| out.flush()) {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                        r => r?,
                    }
                }
            }
            Ok(())
        }
    }
}

/// Runs a `content` verb.
pub fn content(cmd: ContentCmd) -> Result<()> {
    match cmd {
        ContentCmd::Gc {
            grace_secs,
            dry_run,
            data,
        } => {
            let path = data.unwrap_or_else(default_dir);
            let report = gc::collect(&path, Duration::from_secs(grace_secs), dry_run)?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for (h, len) in &report.removed {
                crate::outln!("{verb} {} {len}", hex(h));
            }
            let (mut referenced, mut young) = (0, 0);
            for (h, len, why) in &report.kept {
                let why = match why {
                    Kept::Referenced => {
                        referenced += 1;
                        "referenced"
                    }
                    Kept::Young => {
                        young += 1;
                        "younger than the grace period"
                    }
                };
                crate::outln!("kept {} {len} {why}", hex(h));
            }
            let removed_bytes: u64 = report.removed.iter().map(|(_, l)| l).sum();
            crate::outln!(
                "gc: {verb} {} blobs ({removed_bytes} bytes) and {} temporary files; kept {} ({referenced} referenced, {young} younger than {grace_secs} s)",
                report.removed.len(),
                report.temps_removed,
                report.kept.len()
            );
            Ok(())
        }
    }
}
