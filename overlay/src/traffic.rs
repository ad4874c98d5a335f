//! Bytes in and out of a node, counted on the wire: every connection of
//! the overlay's swarm ([`OVERLAY`]), of the replica group's swarm
//! ([`GROUP`]; votes, batches, observers' streams and content transfers
//! alike) and every HTTP connection (the node's listener) is a
//! [`Counted`] stream. The swarms count TCP under noise and yamux. The
//! node's `/metrics` shows the totals as `metatopia_bytes_received_total`
//! and `metatopia_bytes_sent_total` by `service`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

/// The replica group swarm's totals. Statics, as a node runs one swarm of
/// each kind per process (tests that run several swarms in one process
/// add them up).
pub static GROUP: LazyLock<Arc<Traffic>> = LazyLock::new(Arc::default);

/// The overlay swarm's totals.
pub static OVERLAY: LazyLock<Arc<Traffic>> = LazyLock::new(Arc::default);

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

/// The TCP transport under noise and yamux that a swarm's builder gets
/// from `with_tcp`, with its connections counted into `traffic`.
pub fn tcp(
    key: &libp2p::identity::Keypair,
    traffic: &Arc<Traffic>,
) -> Result<
    libp2p::core::transport::Boxed<(libp2p::PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    use libp2p::Transport as _;
    let noise = libp2p::noise::Config::new(key)?;
    let traffic = traffic.clone();
    Ok(
        libp2p::tcp::tokio::Transport::new(libp2p::tcp::Config::default().nodelay(true))
            .map(move |stream, _| Counted::new(stream, traffic.clone()))
            .upgrade(libp2p::core::upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(libp2p::yamux::Config::default())
            .map(|(peer, muxer), _| (peer, libp2p::core::muxing::StreamMuxerBox::new(muxer)))
            .boxed(),
    )
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
