//! The data directory: where a node keeps its world, keys and lock.
//!
//! ```text
//! DIR/world.redb   the database (store.rs)
//! DIR/player.key   the local player's ed25519 secret key (32 bytes, 0600)
//! DIR/token        bearer token for the local CLI (hex, 0600)
//! DIR/node.lock    held (flock) while a node runs
//! DIR/node.json    where the running node listens
//! DIR/content/     script sources and assets by hash (content.rs)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use metatopia_sim::PlayerId;

/// The default data directory: `$METATOPIA_DATA`, else
/// `$XDG_DATA_HOME/metatopia`, else `$HOME/.local/share/metatopia`, else
/// `./.metatopia`.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("METATOPIA_DATA") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("metatopia");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/metatopia");
    }
    PathBuf::from(".metatopia")
}

/// What a running node writes so that others can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:7420`.
    pub http: String,
    /// The node's process id.
    pub pid: u32,
}

/// An open data directory.
#[derive(Debug)]
pub struct DataDir {
    /// Its path.
    pub path: PathBuf,
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn random_bytes() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b)
}

impl DataDir {
    /// Opens `path`, creating it and its keys if needed.
    pub fn open(path: &Path) -> Result<DataDir> {
        fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let dir = DataDir {
            path: path.to_path_buf(),
        };
        if !dir.path.join("player.key").exists() {
            write_private(&dir.path.join("player.key"), &random_bytes()?)?;
        }
        if !dir.path.join("token").exists() {
            let token: String = random_bytes()?.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&dir.path.join("token"), token.as_bytes())?;
        }
        // Sources of a directory from before the content store.
        crate::content::migrate_scripts(&dir.path)
            .with_context(|| format!("moving {}/scripts into content/", path.display()))?;
        Ok(dir)
    }

    /// The database path.
    pub fn db_path(&self) -> PathBuf {
        self.path.join("world.redb")
    }

    /// The local player's signing key.
    pub fn signing_key(&self) -> Result<ed25519_dalek::SigningKey> {
        let bytes = fs::read(self.path.join("player.key"))?;
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("player.key is not 32 bytes"))?;
        Ok(ed25519_dalek::SigningKey::from_bytes(&secret))
    }

    /// The local player's id (ed25519 public key).
    pub fn player(&self) -> Result<PlayerId> {
        Ok(PlayerId(self.signing_key()?.verifying_key().to_bytes()))
    }

    /// The CLI bearer token.
    pub fn token(&self) -> Result<String> {
        Ok(fs::read_to_string(self.path.join("token"))?
            .trim()
            .to_string())
    }

    /// Takes the node lock, or returns who holds it.
    pub fn lock(&self) -> Result<Result<File, Option<NodeInfo>>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.join("node.lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Ok(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(Err(self.node_info())),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }

    /// Where the running node listens, if it said.
    pub fn node_info(&self) -> Option<NodeInfo> {
        let text = fs::read_to_string(self.path.join("node.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Records where this node listens.
    pub fn write_node_info(&self, info: &NodeInfo) -> Result<()> {
        let tmp = self.path.join("node.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
        fs::rename(&tmp, self.path.join("node.json"))?;
        Ok(())
    }

    /// Forgets where this node listened (on clean shutdown).
    pub fn clear_node_info(&self) {
        let _ = fs::remove_file(self.path.join("node.json"));
    }

    /// The running node's base URL, or a clear error.
    pub fn running_node(&self) -> Result<String> {
        match self.lock()? {
            Ok(_free) => bail!(
                "no node is running on {} (start one with `metatopia up --data {}`)",
                self.path.display(),
                self.path.display()
            ),
            Err(Some(info)) => Ok(info.http),
            Err(None) => bail!(
                "a node holds {} but has not said where it listens yet; try again",
                self.path.display()
            ),
        }
    }
}
