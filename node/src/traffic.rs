//! Bytes in and out of the node, counted on the wire: every HTTP
//! connection (`listener::Capped`) and every connection of the group's
//! libp2p swarm (`replica::net`, TCP under noise and yamux, so members'
//! votes and batches, observers' streams and content transfers alike) is a
//! [`Counted`] stream, and `/metrics` shows the totals as
//! `metatopia_bytes_received_total` and `metatopia_bytes_sent_total` by
//! `service`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

/// The group swarm's totals. A static, as the node runs one swarm per
/// process (tests that run several swarms in one process add them up).
pub static GROUP: LazyLock<Arc<Traffic>> = LazyLock::new(Arc::default);

/// Totals of one service.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes read from peers.
    pub received: AtomicU64,
    /// Bytes written to peers.
    pub sent: AtomicU64,
}

impl Traffic {
    fn got(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn put(&self, n: usize) {
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A stream whose reads and writes are added to a [`Traffic`]. It is an
/// async stream of both kinds the node uses: tokio's (HTTP) and futures'
/// (libp2p), whichever the inner stream is.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    traffic: Arc<Traffic>,
}

impl<S> Counted<S> {
    /// Counts `inner`'s bytes into `traffic`.
    pub fn new(inner: S, traffic: Arc<Traffic>) -> Counted<S> {
        Counted { inner, traffic }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.traffic.got(buf.filled().len() - before);
        }
        poll
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.traffic.put(n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.traffic.put(n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: futures::AsyncRead + Unpin> futures::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.traffic.got(n);
        }
        poll
    }
}

impl<S: futures::AsyncWrite + Unpin> futures::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.traffic.put(n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_directions_are_counted_for_tokio_and_futures_streams() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let traffic = Arc::new(Traffic::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Counted::new(a, traffic.clone());
        a.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"hi!").await.unwrap();
        let mut back = [0u8; 3];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(traffic.sent.load(Ordering::Relaxed), 5);
        assert_eq!(traffic.received.load(Ordering::Relaxed), 3);

        use futures::{AsyncReadExt as _, AsyncWriteExt as _};
        let traffic = Arc::new(Traffic::default());
        let mut c = Counted::new(
            futures::io::Cursor::new(b"abcdef".to_vec()),
            traffic.clone(),
        );
        let mut four = [0u8; 4];
        c.read_exact(&mut four).await.unwrap();
        c.write_all(b"xy").await.unwrap();
        assert_eq!(traffic.received.load(Ordering::Relaxed), 4);
        assert_eq!(traffic.sent.load(Ordering::Relaxed), 2);
    }
}
