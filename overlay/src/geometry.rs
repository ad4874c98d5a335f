//! Geometry behind a trait: who are my Voronoi neighbours, exactly.
//!
//! [`Exact2d`] builds a local Delaunay triangulation with `spade` (exact
//! predicates from `robust`). Coordinates are integers bounded by
//! [`crate::wire::COORD_MAX`], so they convert to `f64` without rounding and
//! every peer evaluates the same exact predicates.
//!
//! Degenerate (co-circular) configurations: the Voronoi neighbours of `p` are
//! the Delaunay neighbours of `p` plus every site lying on the empty
//! circumcircle of a triangle incident to `p`. This set does not depend on
//! how spade splits a co-circular polygon, so two peers with the same input
//! agree, and greedy routing with an id tie-break is exact on it.

use std::collections::BTreeSet;

use spade::handles::{FixedFaceHandle, FixedVertexHandle, InnerTag};
use spade::{DelaunayTriangulation, HasPosition, Point2, Triangulation};

use crate::wire::{NodeId, Point, Shape};

/// The geometry the overlay core uses.
///
/// 2-D exact mode is [`Exact2d`]. A 3-D (or d-D) space would implement the
/// same trait the RayNet way: shoot Monte-Carlo rays from the site and keep
/// the candidates whose bisector is hit first by at least one ray (see
/// `docs/overlay.md`).
pub trait Geometry {
    /// The Voronoi neighbours of `me` among `others`. Sites equal to `me`
    /// and duplicate sites are ignored (the smaller id of a duplicate wins).
    fn neighbours(&self, me: Point, others: &[(NodeId, Point)]) -> Vec<NodeId>;

    /// The neighbours and the squared *reach* of `me`'s cell: a site farther
    /// than the reach from `me` cannot change `me`'s neighbours (it lies
    /// outside every empty circumcircle through `me`). `None` means
    /// unbounded (a hull cell). The default is always unbounded.
    fn neighbourhood(&self, me: Point, others: &[(NodeId, Point)]) -> (Vec<NodeId>, Option<u128>) {
        (self.neighbours(me, others), None)
    }
}

/// Exact 2-D Voronoi neighbours on spade.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exact2d;

#[derive(Debug, Clone, Copy)]
struct Site {
    pos: Point2<f64>,
    index: u32,
}

impl HasPosition for Site {
    type Scalar = f64;
    fn position(&self) -> Point2<f64> {
        self.pos
    }
}

/// Exact conversion: coordinates are bounded by 2^40 < 2^53.
#[allow(clippy::cast_precision_loss)]
fn p2(p: Point) -> Point2<f64> {
    Point2::new(p.x as f64, p.y as f64)
}

fn coord(p: Point2<f64>) -> robust::Coord<f64> {
    robust::Coord { x: p.x, y: p.y }
}

type Dt = DelaunayTriangulation<Site>;

/// Extended neighbours of vertex `v` (Delaunay neighbours plus co-circular
/// sites), as indices stored in the vertices.
fn extended_neighbours(dt: &Dt, v: FixedVertexHandle) -> BTreeSet<u32> {
    let vh = dt.vertex(v);
    let me = vh.data().index;
    let mut out = BTreeSet::new();
    let mut stack: Vec<FixedFaceHandle<InnerTag>> = Vec::new();
    for e in vh.out_edges() {
        out.insert(e.to().data().index);
        if let Some(f) = e.face().as_inner() {
            stack.push(f.fix());
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(f) = stack.pop() {
        if !seen.insert(f) {
            continue;
        }
        let fh = dt.face(f);
        let [a, b, c] = fh.positions();
        for e in fh.adjacent_edges() {
            let twin = e.rev();
            let (Some(g), Some(o)) = (twin.face().as_inner(), twin.opposite_vertex()) else {
                continue;
            };
            if seen.contains(&g.fix()) {
                continue;
            }
            if robust::incircle(coord(a), coord(b), coord(c), coord(o.position())) == 0.0 {
                for w in g.vertices() {
                    out.insert(w.data().index);
                }
                stack.push(g.fix());
            }
        }
    }
    out.remove(&me);
    out
}

impl Geometry for Exact2d {
    fn neighbours(&self, me: Point, others: &[(NodeId, Point)]) -> Vec<NodeId> {
        self.neighbourhood(me, others).0
    }

    fn neighbourhood(&self, me: Point, others: &[(NodeId, Point)]) -> (Vec<NodeId>, Option<u128>) {
        // Sort so duplicates resolve deterministically (smaller id first).
        let mut sorted: Vec<(NodeId, Point)> =
            others.iter().copied().filter(|s| s.1 != me).collect();
        sorted.sort_unstable_by_key(|&(id, p)| (p, id));
        sorted.dedup_by_key(|&mut (_, p)| p);
        // Insert in a pseudo-random order: sorted input makes incremental
        // Delaunay insertion walk the hull.
        sorted.sort_unstable_by_key(|&(id, _)| id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut dt = Dt::new();
        let Ok(me_handle) = dt.insert(Site {
            pos: p2(me),
            index: u32::MAX,
        }) else {
            return (Vec::new(), None);
        };
        let mut ids = Vec::with_capacity(sorted.len());
        for (id, p) in sorted {
            let Ok(index) = u32::try_from(ids.len()) else {
                break;
            };
            if dt.insert(Site { pos: p2(p), index }).is_ok() {
                ids.push(id);
            }
        }
        let ns = extended_neighbours(&dt, me_handle)
            .into_iter()
            .filter_map(|i| ids.get(i as usize).copied())
            .collect();
        (ns, reach2(&dt, me_handle))
    }
}

/// Twice the largest circumradius of the triangles around `v` (squared,
/// rounded up generously), or `None` on the hull.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn reach2(dt: &Dt, v: FixedVertexHandle) -> Option<u128> {
    let vh = dt.vertex(v);
    let me = vh.position();
    let mut r2max = 0.0f64;
    let mut any = false;
    for e in vh.out_edges() {
        let f = e.face().as_inner()?;
        let c = f.circumcenter();
        let (dx, dy) = (c.x - me.x, c.y - me.y);
        r2max = r2max.max(dx * dx + dy * dy);
        any = true;
    }
    if !any || !r2max.is_finite() {
        return None;
    }
    // (2r)^2 with 1 % slack plus a millimetre.
    let reach = 4.0 * r2max * 1.01 + 1.0;
    if reach >= 1e36 {
        None
    } else {
        Some(reach as u128)
    }
}

/// The exact global picture, for tests and the simulator: one spade
/// triangulation of every site.
#[derive(Debug)]
pub struct Oracle {
    dt: Dt,
    ids: Vec<NodeId>,
    pos: Vec<Point>,
    handles: Vec<Option<FixedVertexHandle>>,
}

impl Oracle {
    /// Triangulate all sites (duplicates: the smaller id wins).
    pub fn new(sites: &[(NodeId, Point)]) -> Self {
        let mut sorted = sites.to_vec();
        sorted.sort_by_key(|&(id, p)| (p, id));
        sorted.dedup_by_key(|&mut (_, p)| p);
        let ids: Vec<NodeId> = sorted.iter().map(|s| s.0).collect();
        let pos: Vec<Point> = sorted.iter().map(|s| s.1).collect();
        let verts: Vec<Site> = sorted
            .iter()
            .enumerate()
            .map(|(i, &(_, p))| Site {
                pos: p2(p),
                index: u32::try_from(i).unwrap_or(u32::MAX),
            })
            .collect();
        let dt = Dt::bulk_load(verts).unwrap_or_default();
        let mut handles = vec![None; ids.len()];
        for v in dt.vertices() {
            if let Some(h) = handles.get_mut(v.data().index as usize) {
                *h = Some(v.fix());
            }
        }
        Self {
            dt,
            ids,
            pos,
            handles,
        }
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no sites.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of sites on the convex hull (spade counts collinear hull
    /// sites too). A triangulation of `n` sites with `h` on the hull has
    /// `3n - 3 - h` edges, so its mean degree is `6 - (6 + 2h) / n`.
    pub fn hull_len(&self) -> usize {
        self.dt.convex_hull_size()
    }

    /// Every site's exact Voronoi neighbours, keyed by id.
    pub fn neighbours(&self) -> std::collections::BTreeMap<NodeId, BTreeSet<NodeId>> {
        let mut out = std::collections::BTreeMap::new();
        for (i, h) in self.handles.iter().enumerate() {
            let (Some(h), Some(&id)) = (h, self.ids.get(i)) else {
                continue;
            };
            let set = extended_neighbours(&self.dt, *h)
                .into_iter()
                .filter_map(|j| self.ids.get(j as usize).copied())
                .collect();
            out.insert(id, set);
        }
        out
    }

    /// The owner of `t`: the nearest site, ties to the smaller id.
    pub fn owner(&self, t: Point) -> Option<NodeId> {
        let near = self.dt.nearest_neighbor(p2(t))?;
        let i = near.data().index;
        let mut best = (
            self.pos.get(i as usize)?.dist2(t),
            *self.ids.get(i as usize)?,
        );
        for j in extended_neighbours(&self.dt, near.fix()) {
            let (Some(&p), Some(&id)) = (self.pos.get(j as usize), self.ids.get(j as usize)) else {
                continue;
            };
            best = best.min((p.dist2(t), id));
        }
        Some(best.1)
    }
}

impl Shape {
    /// Whether `p` lies inside the shape.
    pub fn contains(&self, p: Point) -> bool {
        match *self {
            Shape::Disc { centre, radius } => {
                centre.dist2(p) <= u128::from(radius) * u128::from(radius)
            }
            Shape::Rect(r) => r.contains(p),
        }
    }

    /// A point of the shape (where a walk starts).
    pub fn anchor(&self) -> Point {
        match *self {
            Shape::Disc { centre, .. } => centre,
            Shape::Rect(r) => r.centre(),
        }
    }

    /// Whether the shape meets the half-plane of points at least as close to
    /// `q` as to `p`. This contains the Voronoi edge between `p` and `q`, so
    /// walking along every neighbour that passes this test visits every cell
    /// meeting the shape (a conservative superset).
    pub fn meets_side_of(&self, p: Point, q: Point) -> bool {
        match *self {
            Shape::Rect(r) => {
                r.corners().iter().any(|&c| c.dist2(q) <= c.dist2(p)) || r.contains(q)
            }
            Shape::Disc { centre, radius } => {
                // Signed distance from the centre to the bisector, towards q.
                let dq = centre.dist2(q);
                let dp = centre.dist2(p);
                if dq <= dp {
                    return true;
                }
                #[allow(clippy::cast_precision_loss)]
                let (diff, len, r) = ((dq - dp) as f64, p.dist2(q) as f64, radius as f64);
                // (dq - dp) / (2 |pq|) <= r, with a little slack so rounding
                // only ever adds a visit.
                diff <= 2.0 * r * len.sqrt() * (1.0 + 1e-9) + 1.0
            }
        }
    }
}
