//! The libp2p side: the wire codec over request-response, the composed
//! `NetworkBehaviour`, and the mapping between libp2p peers and overlay ids.
//!
//! Every overlay message travels as one request (`/metatopia/overlay/1`)
//! whose bytes are the versioned envelope of [`crate::wire`]; the response
//! is a one-byte ack. A failed request (dial failure, closed connection,
//! timeout) goes back to the core as [`crate::Peer::unreachable`].

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, connection_limits, identify, mdns, request_response,
};

use crate::wire::{ADDR_BYTES_MAX, MESSAGE_BYTES_MAX, NodeId};

/// The overlay protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/metatopia/overlay/1");

/// Overlay id of a libp2p peer: the first 8 bytes of blake3 of its bytes.
pub fn node_id(peer: &PeerId) -> NodeId {
    let h = blake3::hash(&peer.to_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    NodeId(u64::from_le_bytes(b))
}

/// Pack a peer id and one address into a contact's opaque address.
pub fn pack_addr(peer: &PeerId, addr: Option<&Multiaddr>) -> Vec<u8> {
    let p = peer.to_bytes();
    let mut out = Vec::with_capacity(1 + p.len() + 32);
    out.push(u8::try_from(p.len()).unwrap_or(0));
    out.extend_from_slice(&p);
    if let Some(a) = addr {
        let a = a.to_vec();
        if out.len() + a.len() <= ADDR_BYTES_MAX {
            out.extend_from_slice(&a);
        }
    }
    out
}

/// Unpack a contact's opaque address (never panics on bad bytes).
pub fn unpack_addr(bytes: &[u8]) -> Option<(PeerId, Option<Multiaddr>)> {
    let (&n, rest) = bytes.split_first()?;
    let n = usize::from(n);
    if rest.len() < n {
        return None;
    }
    let (p, a) = rest.split_at(n);
    let peer = PeerId::from_bytes(p).ok()?;
    let addr = if a.is_empty() {
        None
    } else {
        Multiaddr::try_from(a.to_vec()).ok()
    };
    Some((peer, addr))
}

/// Request-response codec: raw envelope bytes, bounded by `MESSAGE_BYTES_MAX`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Codec;

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = u8;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(MESSAGE_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf)
            .await?;
        if buf.len() > MESSAGE_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "overlay message too large",
            ));
        }
        Ok(buf)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<u8>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut buf = Vec::new();
        io.take(2).read_to_end(&mut buf).await?;
        match buf.as_slice() {
            [b] => Ok(*b),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad overlay ack",
            )),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: u8) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[res]).await?;
        io.close().await
    }
}

/// The overlay's libp2p behaviour: overlay messages, identify, connection
/// limits and optional mDNS.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)]
pub struct Behaviour {
    /// Connection limits (checked first).
    pub limits: connection_limits::Behaviour,
    /// Overlay messages.
    pub overlay: request_response::Behaviour<Codec>,
    /// Address exchange.
    pub identify: identify::Behaviour,
    /// LAN discovery, when enabled.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}
