//! The HTTP listener with connection caps: at most
//! `[limits] http_connections_max` connections at once, and at most
//! `http_connections_per_ip_max` from one address, so that one client's
//! connection flood (idle sockets, slow readers) leaves room for everyone
//! else; and none while the process's memory is over
//! `connections_memory_max_mib`. A connection over a cap is answered `503`
//! with the JSON error naming the cap, then closed, and counted in
//! `/metrics`. Admitted connections count their bytes
//! ([`crate::traffic`]).

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::traffic::{Counted, Traffic};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Counters of the listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections refused at a cap since start.
    pub refused: AtomicU64,
    /// Bytes in and out of admitted connections.
    pub traffic: Arc<Traffic>,
}

/// The caps.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Connections at once.
    pub total: usize,
    /// Connections at once from one IP address.
    pub per_ip: usize,
    /// No new connection while the process uses more physical memory
    /// (`[limits] connections_memory_max_mib`).
    pub memory_max_bytes: usize,
}

/// The process's physical memory, read at most every 100 ms (as libp2p's
/// memory cap does): a flood of connections does not become a flood of
/// reads of `/proc`.
#[derive(Debug)]
struct Memory {
    read_at: Option<std::time::Instant>,
    bytes: usize,
}

impl Memory {
    fn now(&mut self) -> usize {
        let fresh = self
            .read_at
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_millis(100));
        if !fresh {
            // Unknown (an unsupported platform): never over the cap.
            self.bytes = memory_stats::memory_stats().map_or(0, |s| s.physical_mem);
            self.read_at = Some(std::time::Instant::now());
        }
        self.bytes
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: BTreeMap<IpAddr, usize>,
}

/// A TCP listener that enforces [`Caps`].
#[derive(Debug)]
pub struct Capped {
    inner: TcpListener,
    caps: Caps,
    open: Arc<Mutex<Open>>,
    memory: Memory,
    closing: Arc<std::sync::atomic::AtomicUsize>,
    counters: Arc<ConnectionCounters>,
}

impl Capped {
    /// Wraps `inner`.
    pub fn new(inner: TcpListener, caps: Caps, counters: Arc<ConnectionCounters>) -> Capped {
        Capped {
            inner,
            caps,
            open: Arc::default(),
            memory: Memory {
                read_at: None,
                bytes: 0,
            },
            closing: Arc::default(),
            counters,
        }
    }

    /// Takes a slot for `ip`, or says which cap is full.
    fn admit(&mut self, ip: IpAddr) -> Result<Slot, String> {
        let memory = self.memory.now();
        if memory > self.caps.memory_max_bytes {
            return Err(format!(
                "this node is short of memory ({} MiB in use, [limits] connections_memory_max_mib in node.toml allows {} MiB); try again later",
                memory >> 20,
                self.caps.memory_max_bytes >> 20
            ));
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.caps.total {
            return Err(format!(
                "too many connections to this node ({}, [limits] http_connections_max in node.toml); try again later",
                self.caps.total
            ));
        }
        let mine = open.by_ip.entry(ip).or_default();
        if *mine >= self.caps.per_ip {
            return Err(format!(
                "too many connections from {ip} ({}, [limits] http_connections_per_ip_max in node.toml); close some and try again",
                self.caps.per_ip
            ));
        }
        *mine += 1;
        open.total += 1;
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            ip,
            open: self.open.clone(),
            counters: self.counters.clone(),
        })
    }
}

/// A connection's place under the caps, given back when it closes.
#[derive(Debug)]
struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<Open>>,
    counters: Arc<ConnectionCounters>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.by_ip.remove(&self.ip);
            }
        }
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admitted connection.
#[derive(Debug)]
pub struct Admitted {
    io: Counted<TcpStream>,
    _slot: Slot,
}

/// Refused connections being closed gently at once, at most.
const CLOSING_MAX: usize = 64;

/// Answers a refused connection with `503` and the reason, without
/// waiting on it: a client that does not read gets nothing. Then, while
/// fewer than [`CLOSING_MAX`] others are closing, it ends the connection
/// and reads (and drops) what the client sent for up to a second, so that
/// closing does not reset the connection before the client read the
/// answer; past that, the socket is dropped at once.
fn refuse(io: TcpStream, reason: &str, closing: &Arc<std::sync::atomic::AtomicUsize>) {
    let body = serde_json::json!({ "error": reason }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.try_write(response.as_bytes());
    if closing.fetch_add(1, Ordering::Relaxed) >= CLOSING_MAX {
        closing.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let closing = closing.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut io = io;
        let drain = async {
            io.shutdown().await?;
            let mut sink = [0u8; 4096];
            let mut left: usize = 64 * 1024;
            while left > 0 {
                let n = io.read(&mut sink).await?;
                if n == 0 {
                    break;
                }
                left = left.saturating_sub(n);
            }
            Ok::<(), io::Error>(())
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
        closing.fetch_sub(1, Ordering::Relaxed);
    });
}

impl axum::serve::Listener for Capped {
    type Io = Admitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Admitted, SocketAddr) {
        loop {
            let (io, addr) = match self.inner.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.admit(addr.ip()) {
                Ok(slot) => {
                    let io = Counted::new(io, self.counters.traffic.clone());
                    return (Admitted { io, _slot: slot }, addr);
                }
                Err(reason) => {
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    refuse(io, &reason, &self.closing);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn caps_count_per_address_and_in_total() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut capped = Capped::new(
            inner,
            Caps {
                total: 3,
                per_ip: 2,
                memory_max_bytes: usize::MAX,
            },
            Arc::default(),
        );
        let a: IpAddr = "127.0.0.2".parse().expect("ip");
        let b: IpAddr = "127.0.0.3".parse().expect("ip");
        let a1 = capped.admit(a).expect("first");
        let _a2 = capped.admit(a).expect("second");
        let err = capped.admit(a).expect_err("third from a");
        assert!(err.contains("http_connections_per_ip_max"), "{err}");
        let _b1 = capped.admit(b).expect("b");
        let err = capped.admit(b).expect_err("total");
        assert!(err.contains("http_connections_max"), "{err}");
        drop(a1);
        let _b2 = capped
            .admit(b)
            .expect("a closed connection gives its slot back");
        assert_eq!(capped.counters.open.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn no_connection_is_admitted_while_memory_is_over_the_cap() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut capped = Capped::new(
            inner,
            Caps {
                total: 3,
                per_ip: 2,
                memory_max_bytes: 1 << 20,
            },
            Arc::default(),
        );
        let ip: IpAddr = "127.0.0.2".parse().expect("ip");
        let err = capped
            .admit(ip)
            .expect_err("a test process uses more than 1 MiB");
        assert!(err.contains("connections_memory_max_mib"), "{err}");
        assert_eq!(capped.counters.open.load(Ordering::Relaxed), 0);
        capped.caps.memory_max_bytes = usize::MAX;
        let _slot = capped.admit(ip).expect("under the cap");
    }
}
