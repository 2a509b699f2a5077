//! Clearance of a graph drawing, checked on the node centres in pixels of the stored image.
//!
//! Nodes are opaque discs drawn over the edges, so an edge u–w that runs under (or grazes) a node
//! v reads as the two edges u–v and v–w, and two edges that leave a node at nearly the same angle,
//! or cross at a shallow angle, merge into one stroke. A drawing whose image determines its
//! canonical perception text has:
//!
//! - every pair of nodes at least `2·radius + margin` apart (discs, and the labels drawn inside
//!   them, never touch);
//! - every edge at least `radius + margin` from the centre of every node it does not join;
//! - every two edges of a common node leaving it at least [`MIN_EDGE_ANGLE_DEG`] apart;
//! - every two edges without a common node that cross doing so at an angle of at least
//!   [`MIN_EDGE_ANGLE_DEG`]. Two such edges that do not meet are closest at an endpoint of one of
//!   them, a node the other does not join, so the second rule already keeps them at least
//!   `radius + margin` apart.
//!
//! `margin` comes from [`clearance_margin_px`]: the white gap [`CLEARANCE_GAP`] plus one line width
//! (half the edge stroke plus half the node ring, which both extend beyond their centre lines).

use std::fmt;

/// The visible white gap between an edge stroke and the ring of a node it does not join (and
/// between two node rings), as a fraction of the image side: 4.5 px at the default 224 px, still
/// ≥ 2.5 px after resizing to a 128 px model input, so the gap survives downsampling and
/// anti-aliasing (which blurs about one pixel on each side of a stroke).
pub const CLEARANCE_GAP: f32 = 0.02;

/// Minimum angle, in degrees, between two edges that leave a common node, and between two edges
/// that cross. For the default style at 224 px (node radius 12.3 px, line width 1.6 px):
///
/// - two strokes leaving a node at angle θ have centre lines `2·(r + w/2)·sin(θ/2)` apart where
///   they come out of the ring; that exceeds the line width (strokes no longer touch) from 7°
///   up, and at 12° leaves about one pixel of white between them right at the ring, widening with
///   distance;
/// - two strokes crossing at angle θ merge over a stretch of about `2·(w + 1 px)/sin θ`; at 12°
///   that stretch is no longer than a node's diameter, so the crossing reads as an X and not as
///   a shared stretch of line.
pub const MIN_EDGE_ANGLE_DEG: f32 = 12.0;

/// The clearance margin in pixels for a `size`×`size` image drawn with edges and rings of width
/// `line_width` px: [`CLEARANCE_GAP`] of the image side plus one line width (6.1 px for the
/// default style at 224 px).
pub fn clearance_margin_px(size: u32, line_width: f32) -> f32 {
    line_width + CLEARANCE_GAP * size as f32
}

/// How a drawing fails the clearance check (distances and angles as measured, with the bound).
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// An edge names a node that has no centre.
    UnknownNode { edge: (usize, usize), nodes: usize },
    /// Two node centres closer than `2·radius + margin`.
    NodesTooClose {
        a: usize,
        b: usize,
        distance: f32,
        required: f32,
    },
    /// An edge passes closer than `radius + margin` to the centre of a node it does not join.
    EdgeNearNode {
        edge: (usize, usize),
        node: usize,
        distance: f32,
        required: f32,
    },
    /// Two edges leave their common node at less than the minimum angle.
    NarrowAngle {
        node: usize,
        a: usize,
        b: usize,
        angle_deg: f32,
        required_deg: f32,
    },
    /// Two edges without a common node meet at less than the minimum angle.
    ShallowCrossing {
        e: (usize, usize),
        f: (usize, usize),
        angle_deg: f32,
        required_deg: f32,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::UnknownNode { edge, nodes } => write!(
                f,
                "edge {}-{} names a node outside the {nodes} placed nodes",
                edge.0, edge.1
            ),
            Violation::NodesTooClose {
                a,
                b,
                distance,
                required,
            } => write!(
                f,
                "nodes {a} and {b} are {distance:.2} px apart (need ≥ {required:.2} px)"
            ),
            Violation::EdgeNearNode {
                edge,
                node,
                distance,
                required,
            } => write!(
                f,
                "edge {}-{} passes {distance:.2} px from the centre of node {node} (need ≥ {required:.2} px)",
                edge.0, edge.1
            ),
            Violation::NarrowAngle {
                node,
                a,
                b,
                angle_deg,
                required_deg,
            } => write!(
                f,
                "edges {node}-{a} and {node}-{b} leave node {node} {angle_deg:.1}° apart (need ≥ {required_deg:.1}°)"
            ),
            Violation::ShallowCrossing {
                e,
                f: g,
                angle_deg,
                required_deg,
            } => write!(
                f,
                "edges {}-{} and {}-{} cross at {angle_deg:.1}° (need ≥ {required_deg:.1}°)",
                e.0, e.1, g.0, g.1
            ),
        }
    }
}

type P = (f32, f32);

fn sub(a: P, b: P) -> P {
    (a.0 - b.0, a.1 - b.1)
}

fn dot(a: P, b: P) -> f32 {
    a.0 * b.0 + a.1 * b.1
}

fn cross(a: P, b: P) -> f32 {
    a.0 * b.1 - a.1 * b.0
}

fn norm(a: P) -> f32 {
    dot(a, a).sqrt()
}

/// Distance from `p` to the segment `a`–`b`.
fn point_segment(p: P, a: P, b: P) -> f32 {
    let ab = sub(b, a);
    let len2 = dot(ab, ab);
    let t = if len2 > 0.0 {
        (dot(sub(p, a), ab) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    norm(sub(p, (a.0 + t * ab.0, a.1 + t * ab.1)))
}

/// Whether segments `a`–`b` and `c`–`d` share a point (touching and collinear overlap included).
fn segments_meet(a: P, b: P, c: P, d: P) -> bool {
    let o1 = cross(sub(b, a), sub(c, a));
    let o2 = cross(sub(b, a), sub(d, a));
    let o3 = cross(sub(d, c), sub(a, c));
    let o4 = cross(sub(d, c), sub(b, c));
    let straddle = |x: f32, y: f32| (x <= 0.0 && y >= 0.0) || (x >= 0.0 && y <= 0.0);
    straddle(o1, o2) && straddle(o3, o4) && {
        // Collinear segments straddle trivially; they meet only if their extents overlap.
        if o1 == 0.0 && o2 == 0.0 {
            let within = |p: P, q: P, r: P| {
                r.0 >= p.0.min(q.0)
                    && r.0 <= p.0.max(q.0)
                    && r.1 >= p.1.min(q.1)
                    && r.1 <= p.1.max(q.1)
            };
            within(a, b, c) || within(a, b, d) || within(c, d, a) || within(c, d, b)
        } else {
            true
        }
    }
}

/// Whether `x` falls short of `bound` (a NaN always does).
fn below(x: f32, bound: f32) -> bool {
    x.is_nan() || x < bound
}

/// Angle in degrees between directions `u` and `v`, in `[0, 180]` (NaN for a zero vector).
fn angle_deg(u: P, v: P) -> f32 {
    cross(u, v).atan2(dot(u, v)).abs().to_degrees()
}

/// The first clearance violation of a drawing, or `None` when it has none (see the module
/// documentation for the rules). `edges` are node pairs, `centres_px` the node centres indexed by
/// node number, `radius_px` the node radius and `margin_px` the margin, all in pixels of the
/// stored image. Any NaN distance or angle counts as a violation.
pub fn clearance_violation(
    edges: &[(u8, u8)],
    centres_px: &[(f32, f32)],
    radius_px: f32,
    margin_px: f32,
) -> Option<Violation> {
    let n = centres_px.len();
    let es: Vec<(usize, usize)> = edges
        .iter()
        .map(|&(u, v)| (u as usize, v as usize))
        .collect();
    if let Some(&edge) = es.iter().find(|e| e.0 >= n || e.1 >= n) {
        return Some(Violation::UnknownNode { edge, nodes: n });
    }
    let c = centres_px;
    let node_sep = 2.0 * radius_px + margin_px;
    for a in 0..n {
        for b in a + 1..n {
            let distance = norm(sub(c[a], c[b]));
            if below(distance, node_sep) {
                return Some(Violation::NodesTooClose {
                    a,
                    b,
                    distance,
                    required: node_sep,
                });
            }
        }
    }
    let edge_node = radius_px + margin_px;
    for &(u, v) in &es {
        for node in (0..n).filter(|&x| x != u && x != v) {
            let distance = point_segment(c[node], c[u], c[v]);
            if below(distance, edge_node) {
                return Some(Violation::EdgeNearNode {
                    edge: (u, v),
                    node,
                    distance,
                    required: edge_node,
                });
            }
        }
    }
    for (i, &e) in es.iter().enumerate() {
        for &f in &es[i + 1..] {
            let common = [e.0, e.1].into_iter().find(|x| *x == f.0 || *x == f.1);
            if let Some(node) = common {
                let a = if e.0 == node { e.1 } else { e.0 };
                let b = if f.0 == node { f.1 } else { f.0 };
                let angle = angle_deg(sub(c[a], c[node]), sub(c[b], c[node]));
                if below(angle, MIN_EDGE_ANGLE_DEG) {
                    return Some(Violation::NarrowAngle {
                        node,
                        a,
                        b,
                        angle_deg: angle,
                        required_deg: MIN_EDGE_ANGLE_DEG,
                    });
                }
                continue;
            }
            let (p, q, r, s) = (c[e.0], c[e.1], c[f.0], c[f.1]);
            if segments_meet(p, q, r, s) {
                // Angle between the lines, folded into [0, 90].
                let a = angle_deg(sub(q, p), sub(s, r));
                let angle = a.min(180.0 - a);
                if below(angle, MIN_EDGE_ANGLE_DEG) {
                    return Some(Violation::ShallowCrossing {
                        e,
                        f,
                        angle_deg: angle,
                        required_deg: MIN_EDGE_ANGLE_DEG,
                    });
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: f32 = 10.0;
    const M: f32 = 5.0;

    #[test]
    fn a_clear_drawing_passes() {
        // A triangle and a far node, all well apart.
        let c = [(20.0, 20.0), (120.0, 20.0), (70.0, 110.0), (200.0, 200.0)];
        assert_eq!(
            clearance_violation(&[(0, 1), (1, 2), (0, 2)], &c, R, M),
            None
        );
    }

    #[test]
    fn edge_through_a_node_is_detected() {
        let c = [(20.0, 20.0), (70.0, 20.0), (120.0, 20.0)];
        let v = clearance_violation(&[(0, 2)], &c, R, M);
        assert!(
            matches!(v, Some(Violation::EdgeNearNode { edge: (0, 2), node: 1, distance, .. }) if distance == 0.0),
            "{v:?}"
        );
        // Grazing: 14 px from the centre (disc edge at 10, margin 5) still fails; 15 px passes.
        let c = [(20.0, 20.0), (70.0, 34.0), (120.0, 20.0)];
        assert!(matches!(
            clearance_violation(&[(0, 2)], &c, R, M),
            Some(Violation::EdgeNearNode { .. })
        ));
        let c = [(20.0, 20.0), (70.0, 35.0), (120.0, 20.0)];
        assert_eq!(clearance_violation(&[(0, 2)], &c, R, M), None);
        let text = clearance_violation(&[(0, 2)], &[(0.0, 0.0), (50.0, 1.0), (100.0, 0.0)], R, M)
            .map(|v| v.to_string())
            .unwrap_or_default();
        assert!(
            text.contains("edge 0-2") && text.contains("node 1"),
            "{text}"
        );
    }

    #[test]
    fn nodes_too_close_are_detected() {
        // 24 px apart: discs 20 px wide plus a 5 px margin need 25.
        let c = [(20.0, 20.0), (44.0, 20.0)];
        let v = clearance_violation(&[], &c, R, M);
        assert!(
            matches!(v, Some(Violation::NodesTooClose { a: 0, b: 1, .. })),
            "{v:?}"
        );
        assert_eq!(
            clearance_violation(&[], &[(20.0, 20.0), (45.0, 20.0)], R, M),
            None
        );
    }

    #[test]
    fn collinear_overlaps_are_detected() {
        // Edges 0-1 and 0-2 leave node 0 about 6° apart; the far ends are far from both edges.
        let c = [(0.0, 0.0), (200.0, 0.0), (150.0, 16.0)];
        let v = clearance_violation(&[(0, 1), (0, 2)], &c, R, M);
        assert!(
            matches!(v, Some(Violation::NarrowAngle { node: 0, a: 1, b: 2, angle_deg, .. }) if angle_deg < 7.0),
            "{v:?}"
        );
        // 20° apart is fine.
        let t = 20f32.to_radians();
        let c = [(0.0, 0.0), (200.0, 0.0), (150.0 * t.cos(), 150.0 * t.sin())];
        assert_eq!(clearance_violation(&[(0, 1), (0, 2)], &c, R, M), None);
        // Edges 0-1 and 2-3 cross at about 8.5°, every node far from the other edge.
        let c = [(0.0, 0.0), (400.0, 0.0), (0.0, 30.0), (400.0, -30.0)];
        let v = clearance_violation(&[(0, 1), (2, 3)], &c, R, M);
        assert!(
            matches!(
                v,
                Some(Violation::ShallowCrossing {
                    e: (0, 1),
                    f: (2, 3),
                    ..
                })
            ),
            "{v:?}"
        );
        // The same at a right angle is fine.
        let c = [(0.0, 0.0), (300.0, 0.0), (150.0, -150.0), (150.0, 150.0)];
        assert_eq!(clearance_violation(&[(0, 1), (2, 3)], &c, R, M), None);
        // Collinear, overlapping edges without a common node.
        let c = [(0.0, 0.0), (100.0, 0.0), (50.0, 0.0), (150.0, 0.0)];
        let v = clearance_violation(&[(0, 1), (2, 3)], &c, 0.0, M);
        assert!(matches!(v, Some(Violation::EdgeNearNode { .. })), "{v:?}");
    }

    #[test]
    fn bad_input_is_a_violation_not_a_panic() {
        let v = clearance_violation(&[(0, 5)], &[(0.0, 0.0), (100.0, 0.0)], R, M);
        assert!(matches!(v, Some(Violation::UnknownNode { .. })), "{v:?}");
        let v = clearance_violation(&[], &[(0.0, 0.0), (f32::NAN, 0.0)], R, M);
        assert!(v.is_some());
    }
}
