//! Metatopia overlay: a Raynet-style Voronoi overlay.
//!
//! Every peer sits at a point of the world (integer millimetres) and owns the
//! Voronoi cell around it. Peers keep their exact Voronoi (Delaunay)
//! neighbours, their AOI and close neighbours, one Kleinberg long-range link
//! and the back-links they must hand over; greedy routing reaches the owner
//! of any point, and walks over the cells meeting a disc answer
//! area-of-interest queries. See `docs/overlay.md`.
//!
//! Layout:
//! - [`wire`]: ids, points, contacts, messages and the versioned codec.
//! - [`geometry`]: the geometry trait, exact 2-D on spade, the global oracle.
//! - [`record`]: region records signed by their hosting group; who may replace one.
//! - [`peer`]: the sans-IO core state machine.
//! - [`fuzz`]: the decoder fuzz body.
//! - [`net`]: the libp2p codec and `NetworkBehaviour`.
//! - [`service`]: the tokio service and the [`Handle`] the node calls.
//! - [`simnet`]: a deterministic simulated network that runs many cores.
//! - [`traffic`]: bytes on the wire, counted under noise on the node's
//!   libp2p swarms (this one and the replica group's) and on its HTTP
//!   connections.

pub mod fuzz;
pub mod geometry;
pub mod net;
pub mod peer;
pub mod record;
pub mod service;
pub mod simnet;
pub mod traffic;
pub mod wire;

pub use geometry::{Exact2d, Geometry, Oracle};
pub use net::Behaviour;
pub use peer::{CommandError, Config, Dest, Event, Output, Peer, Stats};
pub use record::RecordError;
pub use service::{Handle, Location, Service, ServiceError, Status};
pub use wire::{
    Contact, GroupMember, MemberSig, Message, NodeId, Point, Rect, RegionId, RegionInfo,
};
