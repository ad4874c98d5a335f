//! Wire types and the versioned message envelope.
//!
//! Every message is `MAGIC, VERSION, postcard(Message)`. The decoder checks
//! the envelope and the size bound before parsing, never panics, and after
//! parsing checks every list bound (postcard itself would accept a long list
//! as long as the bytes are there).

use serde::{Deserialize, Serialize};

/// First byte of every encoded message.
pub const MAGIC: u8 = 0xA7;
/// Second byte: the wire format version.
pub const VERSION: u8 = 2;
/// Largest encoded message, envelope included.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Most contacts carried in one list.
pub const CONTACTS_MAX: usize = 256;
/// Most ids in one list (walk visited set, known ids).
pub const IDS_MAX: usize = 1024;
/// Most bytes in an opaque transport address.
pub const ADDR_BYTES_MAX: usize = 160;
/// Most members of a region's hosting group in its record.
pub const REPLICAS_MAX: usize = 16;
/// Bytes of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Most region records in one message.
pub const REGIONS_MAX: usize = 64;
/// Coordinates are clamped to `[-COORD_MAX, COORD_MAX]` millimetres so that
/// they convert to `f64` exactly and every peer evaluates the same exact
/// predicates (about ±1.1 million km).
pub const COORD_MAX: i64 = 1 << 40;

/// An overlay peer id. The libp2p driver derives it from the `PeerId`
/// (first 8 bytes of blake3 of its bytes); the simulator numbers peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A position in the world, in integer millimetres.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Point {
    /// East, millimetres.
    pub x: i64,
    /// North, millimetres.
    pub y: i64,
}

impl Point {
    /// A point, clamped to the coordinate bound.
    pub fn new(x: i64, y: i64) -> Self {
        Self {
            x: x.clamp(-COORD_MAX, COORD_MAX),
            y: y.clamp(-COORD_MAX, COORD_MAX),
        }
    }

    /// Exact squared distance (coordinates are bounded, so it cannot overflow).
    pub fn dist2(self, other: Point) -> u128 {
        let dx = i128::from(self.x) - i128::from(other.x);
        let dy = i128::from(self.y) - i128::from(other.y);
        (dx * dx + dy * dy).unsigned_abs()
    }

    /// Whether both coordinates are inside the bound.
    pub fn is_valid(self) -> bool {
        (-COORD_MAX..=COORD_MAX).contains(&self.x) && (-COORD_MAX..=COORD_MAX).contains(&self.y)
    }
}

/// An axis-aligned rectangle, bounds inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rect {
    /// Lower-left corner.
    pub min: Point,
    /// Upper-right corner.
    pub max: Point,
}

impl Rect {
    /// Whether `p` is inside (bounds inclusive).
    pub fn contains(&self, p: Point) -> bool {
        p.x >= self.min.x && p.x <= self.max.x && p.y >= self.min.y && p.y <= self.max.y
    }

    /// The centre (rounded towards negative infinity).
    pub fn centre(&self) -> Point {
        Point::new(
            self.min.x + (self.max.x - self.min.x).div_euclid(2),
            self.min.y + (self.max.y - self.min.y).div_euclid(2),
        )
    }

    /// The four corners.
    pub fn corners(&self) -> [Point; 4] {
        [
            self.min,
            Point::new(self.max.x, self.min.y),
            self.max,
            Point::new(self.min.x, self.max.y),
        ]
    }
}

/// How to reach a peer and where it is. `seq` grows with each move of the
/// peer, so a newer record always wins over an older one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// Overlay id.
    pub id: NodeId,
    /// Position (cell site).
    pub pos: Point,
    /// Position version, incremented by the peer on every move.
    pub seq: u32,
    /// Opaque transport address (the libp2p driver stores the peer id and
    /// one multiaddr here; the simulator leaves it empty).
    pub addr: Vec<u8>,
}

/// A region (sim) id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RegionId(pub u32);

/// What a hosted region announces: its id, its bounds and the group that
/// hosts it, signed by members of that group (see [`crate::record`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// Region id.
    pub id: RegionId,
    /// The area it simulates.
    pub bounds: Rect,
    /// The hosting group's identity (the node uses its genesis digest).
    pub group: [u8; 32],
    /// The hosting group's members, in the group's order.
    pub members: Vec<GroupMember>,
    /// Sequence number: a record replaces one of the same group with a
    /// lower number (the node uses its wall clock, milliseconds).
    pub seq: u64,
    /// Members' signatures over everything above ([`RegionInfo::signing_bytes`]).
    pub sigs: Vec<MemberSig>,
}

/// A member of a region's hosting group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// Its ed25519 public key (the node's player id and libp2p identity).
    pub key: [u8; 32],
    /// Where its group endpoint listens (a multiaddr's bytes; may be empty).
    pub addr: Vec<u8>,
}

/// A member's signature of a region record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSig {
    /// The member's index in [`RegionInfo::members`].
    pub member: u16,
    /// ed25519 signature, [`SIGNATURE_BYTES`] long.
    pub sig: Vec<u8>,
}

/// An area for a walk: a disc (AOI query) or a rectangle (region announce).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// All points within `radius` of `centre`.
    Disc {
        /// Centre.
        centre: Point,
        /// Radius in millimetres.
        radius: u64,
    },
    /// A rectangle.
    Rect(Rect),
}

/// What a greedy-routed message does when it reaches the owner of its target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteKind {
    /// The origin wants to join at the target point.
    Join,
    /// The origin wants a long-range link to the owner of the target.
    LongLink,
    /// The origin asks which region covers the target.
    Locate {
        /// Query id chosen by the origin.
        query: u64,
    },
    /// Start a walk over every cell meeting `shape`, at the owner of the target.
    Walk {
        /// Query id chosen by the origin.
        query: u64,
        /// Area to cover.
        shape: Shape,
        /// What the walk does.
        kind: WalkKind,
    },
}

/// A message greedy-forwarded towards the owner of `target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination point.
    pub target: Point,
    /// Who sent it (answers go straight back there).
    pub origin: Contact,
    /// Hops taken so far.
    pub hops: u16,
    /// What to do at the owner.
    pub kind: RouteKind,
}

/// What a walk does at each cell it visits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalkKind {
    /// Collect every peer inside the shape.
    Aoi,
    /// Store a region record at every visited cell.
    Announce(Box<RegionInfo>),
}

/// A token walk over the cells meeting a shape (depth-first, deterministic).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Walk {
    /// Query id chosen by the origin.
    pub query: u64,
    /// Who asked.
    pub origin: Contact,
    /// Area to cover.
    pub shape: Shape,
    /// What to do.
    pub kind: WalkKind,
    /// Peers already visited.
    pub visited: Vec<NodeId>,
    /// Peers still to visit.
    pub frontier: Vec<Contact>,
    /// Peers found inside the shape.
    pub found: Vec<Contact>,
    /// Hops so far (routing plus walk).
    pub hops: u16,
}

/// Every overlay message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Greedy-routed request.
    Route(Route),
    /// The acceptor's answer to a join: contacts relevant to the joiner and
    /// the region records it holds.
    JoinReply {
        /// The acceptor.
        from: Contact,
        /// Contacts the joiner should know.
        contacts: Vec<Contact>,
        /// Region records.
        regions: Vec<RegionInfo>,
    },
    /// The join point is taken exactly by the acceptor; move and retry.
    JoinRefused {
        /// The acceptor.
        from: Contact,
    },
    /// "You are my link": the sender's Voronoi neighbours and the ids of all
    /// its links. Sent when links change, on moves, and as the heartbeat to
    /// Voronoi neighbours. The receiver answers missing contacts with
    /// `Introduce` (the VON enclosing-neighbour check).
    Hello {
        /// The sender.
        from: Contact,
        /// Its Voronoi neighbours.
        vn: Vec<Contact>,
        /// Ids of every link it has.
        known: Vec<NodeId>,
    },
    /// Light heartbeat and position update for non-Voronoi links.
    Heartbeat {
        /// The sender.
        from: Contact,
    },
    /// Liveness probe after missed heartbeats; answered by `Pong`.
    Probe {
        /// The sender.
        from: Contact,
    },
    /// Answer to a `Probe`, or to a heartbeat from a peer that is not (or
    /// no longer) my link, so it refreshes my position. Never answered.
    Pong {
        /// The sender.
        from: Contact,
    },
    /// Contacts the receiver is missing.
    Introduce {
        /// The sender.
        from: Contact,
        /// New contacts.
        contacts: Vec<Contact>,
    },
    /// Graceful leave.
    Bye {
        /// The leaver.
        from: Contact,
    },
    /// The sender owns the long-link target of the receiver.
    LongLinkAck {
        /// The owner.
        from: Contact,
        /// The target point it acknowledges.
        target: Point,
    },
    /// The sender no longer uses the receiver as its long link.
    LongLinkRelease {
        /// The origin of the long link.
        from: Contact,
    },
    /// Answer to `RouteKind::Locate`.
    LocateReply {
        /// The owner of the point.
        from: Contact,
        /// Query id.
        query: u64,
        /// Region records covering the point.
        regions: Vec<RegionInfo>,
        /// Hops the request took.
        hops: u16,
    },
    /// A walk in progress.
    Walk(Walk),
    /// End of a walk, sent to its origin.
    WalkDone {
        /// Query id.
        query: u64,
        /// Peers found inside the shape.
        found: Vec<Contact>,
        /// Number of cells visited.
        visited: u32,
        /// False if a bound cut the walk short.
        complete: bool,
    },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the envelope.
    #[error("message shorter than its envelope")]
    Incomplete,
    /// More bytes than `MESSAGE_BYTES_MAX`.
    #[error("message larger than the size bound")]
    TooLarge,
    /// Wrong magic byte.
    #[error("bad magic byte")]
    BadMagic,
    /// A version this build does not speak.
    #[error("unsupported wire version")]
    BadVersion,
    /// postcard rejected the body.
    #[error("malformed message body")]
    Malformed,
    /// Bytes left over after the message.
    #[error("trailing bytes after message")]
    Trailing,
    /// A list, address or coordinate broke its bound.
    #[error("message field out of bounds")]
    OutOfBounds,
}

/// Why a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoding would exceed `MESSAGE_BYTES_MAX`, or a field breaks a bound.
    #[error("message larger than the size bound")]
    TooLarge,
    /// postcard failed.
    #[error("serialisation failed")]
    Serialize,
}

/// Encode a message inside the version envelope.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    if !msg.within_bounds() {
        return Err(EncodeError::TooLarge);
    }
    let out = postcard::to_extend(msg, vec![MAGIC, VERSION]).map_err(|_| EncodeError::Serialize)?;
    if out.len() > MESSAGE_BYTES_MAX {
        return Err(EncodeError::TooLarge);
    }
    Ok(out)
}

/// Encoded length of a message (for accounting in the simulator).
pub fn encoded_len(msg: &Message) -> usize {
    postcard::experimental::serialized_size(msg).map_or(0, |n| n + 2)
}

/// Decode one message: envelope and size first, then postcard, then bounds.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    if bytes.len() > MESSAGE_BYTES_MAX {
        return Err(DecodeError::TooLarge);
    }
    let [magic, version, body @ ..] = bytes else {
        return Err(DecodeError::Incomplete);
    };
    if *magic != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if *version != VERSION {
        return Err(DecodeError::BadVersion);
    }
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(body).map_err(|_| DecodeError::Malformed)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing);
    }
    if !msg.within_bounds() {
        return Err(DecodeError::OutOfBounds);
    }
    Ok(msg)
}

fn contact_ok(c: &Contact) -> bool {
    c.pos.is_valid() && c.addr.len() <= ADDR_BYTES_MAX
}

fn contacts_ok(cs: &[Contact]) -> bool {
    cs.len() <= CONTACTS_MAX && cs.iter().all(contact_ok)
}

fn region_ok(r: &RegionInfo) -> bool {
    r.bounds.min.is_valid()
        && r.bounds.max.is_valid()
        && r.bounds.min.x <= r.bounds.max.x
        && r.bounds.min.y <= r.bounds.max.y
        && r.members.len() <= REPLICAS_MAX
        && r.members.iter().all(|m| m.addr.len() <= ADDR_BYTES_MAX)
        && r.sigs.len() <= r.members.len()
        && r.sigs.iter().all(|s| s.sig.len() == SIGNATURE_BYTES)
}

fn regions_ok(rs: &[RegionInfo]) -> bool {
    rs.len() <= REGIONS_MAX && rs.iter().all(region_ok)
}

fn shape_ok(s: &Shape) -> bool {
    match s {
        Shape::Disc { centre, radius } => centre.is_valid() && *radius <= (COORD_MAX as u64) * 4,
        Shape::Rect(r) => r.min.is_valid() && r.max.is_valid(),
    }
}

impl Message {
    /// Whether every list, address and coordinate is within its bound.
    pub fn within_bounds(&self) -> bool {
        match self {
            Message::Route(r) => {
                r.target.is_valid()
                    && contact_ok(&r.origin)
                    && match &r.kind {
                        RouteKind::Join | RouteKind::LongLink | RouteKind::Locate { .. } => true,
                        RouteKind::Walk { shape, kind, .. } => {
                            shape_ok(shape) && walk_kind_ok(kind)
                        }
                    }
            }
            Message::JoinReply {
                from,
                contacts,
                regions,
            } => contact_ok(from) && contacts_ok(contacts) && regions_ok(regions),
            Message::JoinRefused { from }
            | Message::Heartbeat { from }
            | Message::Probe { from }
            | Message::Pong { from }
            | Message::LongLinkRelease { from }
            | Message::Bye { from } => contact_ok(from),
            Message::Hello { from, vn, known } => {
                contact_ok(from) && contacts_ok(vn) && known.len() <= IDS_MAX
            }
            Message::Introduce { from, contacts } => contact_ok(from) && contacts_ok(contacts),
            Message::LongLinkAck { from, target } => contact_ok(from) && target.is_valid(),
            Message::LocateReply { from, regions, .. } => contact_ok(from) && regions_ok(regions),
            Message::Walk(w) => {
                contact_ok(&w.origin)
                    && shape_ok(&w.shape)
                    && walk_kind_ok(&w.kind)
                    && w.visited.len() <= IDS_MAX
                    && contacts_ok(&w.frontier)
                    && contacts_ok(&w.found)
            }
            Message::WalkDone { found, .. } => contacts_ok(found),
        }
    }

    /// A short name of the variant (for counters).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Route(r) => match r.kind {
                RouteKind::Join => "route-join",
                RouteKind::LongLink => "route-long",
                RouteKind::Locate { .. } => "route-locate",
                RouteKind::Walk { .. } => "route-walk",
            },
            Message::JoinReply { .. } => "join-reply",
            Message::JoinRefused { .. } => "join-refused",
            Message::Hello { .. } => "hello",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Probe { .. } => "probe",
            Message::Pong { .. } => "pong",
            Message::Introduce { .. } => "introduce",
            Message::Bye { .. } => "bye",
            Message::LongLinkAck { .. } => "long-ack",
            Message::LongLinkRelease { .. } => "long-release",
            Message::LocateReply { .. } => "locate-reply",
            Message::Walk(_) => "walk",
            Message::WalkDone { .. } => "walk-done",
        }
    }

    /// The sender's contact, when the message names it.
    pub fn sender(&self) -> Option<&Contact> {
        match self {
            Message::JoinReply { from, .. }
            | Message::JoinRefused { from }
            | Message::Hello { from, .. }
            | Message::Heartbeat { from }
            | Message::Probe { from }
            | Message::Pong { from }
            | Message::Introduce { from, .. }
            | Message::Bye { from }
            | Message::LongLinkAck { from, .. }
            | Message::LongLinkRelease { from }
            | Message::LocateReply { from, .. } => Some(from),
            Message::Route(_) | Message::Walk(_) | Message::WalkDone { .. } => None,
        }
    }
}

fn walk_kind_ok(k: &WalkKind) -> bool {
    match k {
        WalkKind::Aoi => true,
        WalkKind::Announce(r) => region_ok(r),
    }
}
