//! Graph drawings: a seeded force-directed (Fruchterman–Reingold, as networkx's spring layout)
//! placement with a random start and rotation, then edges as lines and nodes as labelled circles.
//! [`clear_layout`] retries the placement until the drawing passes the clearance check of
//! [`super::clearance`] in pixels of the image, so that the image determines the graph.

use super::Gray;
use super::clearance::{Violation, clearance_margin_px, clearance_violation};
use super::glyphs::draw_digit;
use crate::tasks::graph_coloring::Graph;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashMap;
use tiny_skia::{FillRule, Paint, PathBuilder, Pixmap, PixmapPaint, Stroke, Transform};

/// Drawing knobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphStyle {
    /// Node radius as a fraction of the image size.
    pub node_radius: f32,
    /// Edge line width in pixels.
    pub line_width: f32,
    /// Layout iterations.
    pub iterations: usize,
}

impl Default for GraphStyle {
    fn default() -> Self {
        GraphStyle {
            node_radius: 0.055,
            line_width: 1.6,
            iterations: 60,
        }
    }
}

/// Spring layout in the unit square: Fruchterman–Reingold from a random start, with a weak pull
/// to the centre (so isolated nodes and small components stay close), a random rotation, uniform
/// scaling, and a final pass that pushes apart nodes closer than `min_sep` (in unit-square units).
pub fn spring_layout<R: Rng>(g: &Graph, iterations: usize, rng: &mut R) -> Vec<(f32, f32)> {
    let n = g.n;
    let mut pos: Vec<(f32, f32)> = (0..n)
        .map(|_| (rng.random::<f32>() - 0.5, rng.random::<f32>() - 0.5))
        .collect();
    let k = (1.0 / n.max(1) as f32).sqrt();
    let mut temp = 0.15f32;
    let cool = temp / (iterations.max(1) as f32 + 1.0);
    for _ in 0..iterations {
        let mut disp = vec![(0.0f32, 0.0f32); n];
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let (dx, dy) = (pos[i].0 - pos[j].0, pos[i].1 - pos[j].1);
                let d = (dx * dx + dy * dy).sqrt().max(0.01);
                let f = k * k / d;
                disp[i].0 += dx / d * f;
                disp[i].1 += dy / d * f;
            }
            // Gravity towards the centre.
            disp[i].0 -= pos[i].0 * GRAVITY;
            disp[i].1 -= pos[i].1 * GRAVITY;
        }
        for &(u, v) in &g.edges {
            let (u, v) = (u as usize, v as usize);
            let (dx, dy) = (pos[u].0 - pos[v].0, pos[u].1 - pos[v].1);
            let d = (dx * dx + dy * dy).sqrt().max(0.01);
            let f = d * d / k;
            disp[u].0 -= dx / d * f;
            disp[u].1 -= dy / d * f;
            disp[v].0 += dx / d * f;
            disp[v].1 += dy / d * f;
        }
        for i in 0..n {
            let (dx, dy) = disp[i];
            let len = (dx * dx + dy * dy).sqrt().max(1e-6);
            let step = len.min(temp);
            pos[i].0 += dx / len * step;
            pos[i].1 += dy / len * step;
        }
        temp -= cool;
    }
    let theta = rng.random::<f32>() * std::f32::consts::TAU;
    let (s, c) = theta.sin_cos();
    for p in &mut pos {
        *p = (p.0 * c - p.1 * s, p.0 * s + p.1 * c);
    }
    normalize(&mut pos);
    // Separate near-coincident nodes so labels never overlap.
    let min_sep = 0.22f32;
    for _ in 0..50 {
        let mut moved = false;
        for i in 0..n {
            for j in i + 1..n {
                let (dx, dy) = (pos[j].0 - pos[i].0, pos[j].1 - pos[i].1);
                let d = (dx * dx + dy * dy).sqrt();
                if d < min_sep {
                    let (ux, uy) = if d > 1e-4 {
                        (dx / d, dy / d)
                    } else {
                        (1.0, 0.0)
                    };
                    let push = (min_sep - d) / 2.0 + 1e-3;
                    pos[i].0 -= ux * push;
                    pos[i].1 -= uy * push;
                    pos[j].0 += ux * push;
                    pos[j].1 += uy * push;
                    moved = true;
                }
            }
        }
        normalize(&mut pos);
        if !moved {
            break;
        }
    }
    pos
}

const GRAVITY: f32 = 3.0;

/// Centres and scales positions uniformly into the unit square.
fn normalize(pos: &mut [(f32, f32)]) {
    let (minx, maxx) = pos
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (miny, maxy) = pos
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let span = (maxx - minx).max(maxy - miny).max(1e-3);
    let (ox, oy) = (
        (1.0 - (maxx - minx) / span) / 2.0,
        (1.0 - (maxy - miny) / span) / 2.0,
    );
    for p in pos.iter_mut() {
        *p = (ox + (p.0 - minx) / span, oy + (p.1 - miny) / span);
    }
}

/// Most placements tried for one graph before rendering gives up.
pub const MAX_LAYOUT_ATTEMPTS: u64 = 200;

/// Where the nodes of a drawing are, in pixels of the image: centres indexed by node number
/// (pixel `k` spans `[k, k + 1)`, so pixel centres are at `k + 0.5`) and the disc radius.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeGeometry {
    pub centres: Vec<(f32, f32)>,
    pub radius: f32,
}

/// A placement that passed the clearance check, and the number of placements tried (1 when the
/// first one passed).
#[derive(Debug, Clone, PartialEq)]
pub struct ClearLayout {
    pub nodes: NodeGeometry,
    pub attempts: u64,
}

/// No placement passed the clearance check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no layout with clearance in {attempts} attempts (last one: {last})")]
pub struct LayoutError {
    pub attempts: u64,
    pub last: Violation,
}

/// One placement of `g` in pixels of a `size`×`size` image: [`spring_layout`], then
/// [`untangle`] towards the clearance of [`super::clearance`] (with 10 % and one pixel of slack
/// for the rescaling into the square and the snapping to pixel centres), then [`node_centres_px`].
pub fn layout_px<R: Rng>(g: &Graph, size: u32, style: &GraphStyle, rng: &mut R) -> Vec<(f32, f32)> {
    let mut pos = spring_layout(g, style.iterations, rng);
    let radius = node_radius_px(size, style);
    let margin = clearance_margin_px(size, style.line_width);
    let span = (size as f32 - 2.0 * (radius + 2.0)).max(1.0);
    let unit = |px: f32| (1.1 * px + 1.0) / span;
    untangle(
        g,
        &mut pos,
        unit(2.0 * radius + margin),
        unit(radius + margin),
        UNTANGLE_ROUNDS,
    );
    node_centres_px(&pos, size, style)
}

/// Rounds of [`untangle`] per placement.
const UNTANGLE_ROUNDS: usize = 60;

/// Moves nodes of a unit-square placement apart until every node is at least `node_sep` from
/// every other node and at least `edge_clear` from every edge it is not an end of, or `rounds`
/// rounds have passed: a node too close to an edge moves half the shortfall away from it and the
/// edge's ends move the other half (shared in proportion to how near each is to the closest
/// point), two nodes too close move apart, and the placement is rescaled into the unit square
/// after each round.
pub fn untangle(g: &Graph, pos: &mut [(f32, f32)], node_sep: f32, edge_clear: f32, rounds: usize) {
    let n = pos.len();
    for _ in 0..rounds {
        let mut moved = false;
        for &(u, v) in &g.edges {
            let (u, v) = (u as usize, v as usize);
            if u >= n || v >= n {
                continue;
            }
            for w in (0..n).filter(|&w| w != u && w != v) {
                let (a, b, p) = (pos[u], pos[v], pos[w]);
                let ab = (b.0 - a.0, b.1 - a.1);
                let len2 = ab.0 * ab.0 + ab.1 * ab.1;
                let t = if len2 > 0.0 {
                    (((p.0 - a.0) * ab.0 + (p.1 - a.1) * ab.1) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let q = (a.0 + t * ab.0, a.1 + t * ab.1);
                let (dx, dy) = (p.0 - q.0, p.1 - q.1);
                let d = (dx * dx + dy * dy).sqrt();
                if d >= edge_clear {
                    continue;
                }
                let (ux, uy) = if d > 1e-5 {
                    (dx / d, dy / d)
                } else if len2 > 0.0 {
                    let l = len2.sqrt();
                    (-ab.1 / l, ab.0 / l)
                } else {
                    (1.0, 0.0)
                };
                let push = (edge_clear - d) / 2.0 + 1e-3;
                pos[w].0 += ux * push;
                pos[w].1 += uy * push;
                pos[u].0 -= ux * push * (1.0 - t);
                pos[u].1 -= uy * push * (1.0 - t);
                pos[v].0 -= ux * push * t;
                pos[v].1 -= uy * push * t;
                moved = true;
            }
        }
        for i in 0..n {
            for j in i + 1..n {
                let (dx, dy) = (pos[j].0 - pos[i].0, pos[j].1 - pos[i].1);
                let d = (dx * dx + dy * dy).sqrt();
                if d < node_sep {
                    let (ux, uy) = if d > 1e-5 {
                        (dx / d, dy / d)
                    } else {
                        (1.0, 0.0)
                    };
                    let push = (node_sep - d) / 2.0 + 1e-3;
                    pos[i].0 -= ux * push;
                    pos[i].1 -= uy * push;
                    pos[j].0 += ux * push;
                    pos[j].1 += uy * push;
                    moved = true;
                }
            }
        }
        normalize(pos);
        if !moved {
            break;
        }
    }
}

/// Lays `g` out for a `size`×`size` image until the node centres in pixels pass
/// [`clearance_violation`] with the margin of [`clearance_margin_px`]: attempt `a` (from 0) draws
/// its placement from `rng_for(a)`, and at most `max_attempts` (at least 1) are tried.
pub fn clear_layout<R: Rng>(
    g: &Graph,
    size: u32,
    style: &GraphStyle,
    max_attempts: u64,
    mut rng_for: impl FnMut(u64) -> R,
) -> Result<ClearLayout, LayoutError> {
    let radius = node_radius_px(size, style);
    let margin = clearance_margin_px(size, style.line_width);
    let mut attempt = 0;
    loop {
        let centres = layout_px(g, size, style, &mut rng_for(attempt));
        attempt += 1;
        match clearance_violation(&g.edges, &centres, radius, margin) {
            None => {
                return Ok(ClearLayout {
                    nodes: NodeGeometry { centres, radius },
                    attempts: attempt,
                });
            }
            Some(last) if attempt >= max_attempts.max(1) => {
                return Err(LayoutError {
                    attempts: attempt,
                    last,
                });
            }
            Some(_) => {}
        }
    }
}

/// A node drawn once (white disc, black ring, centred label) on a transparent square whose centre
/// is the centre of pixel (side/2, side/2); cached per thread by (label, radius, line width).
fn node_sprite(label: usize, r: f32, line_width: f32) -> Option<Pixmap> {
    let side = (2.0 * r + line_width + 4.0).ceil() as u32 | 1;
    let mut pm = Pixmap::new(side, side)?;
    let c = (side / 2) as f32 + 0.5;
    let mut black = Paint::default();
    black.set_color_rgba8(0, 0, 0, 255);
    black.anti_alias = true;
    let mut white = Paint::default();
    white.set_color_rgba8(255, 255, 255, 255);
    white.anti_alias = true;
    let circle = PathBuilder::from_circle(c, c, r)?;
    pm.fill_path(
        &circle,
        &white,
        FillRule::Winding,
        Transform::identity(),
        None,
    );
    let ring = Stroke {
        width: line_width,
        ..Stroke::default()
    };
    pm.stroke_path(&circle, &black, &ring, Transform::identity(), None);
    let digits: Vec<u8> = label.to_string().bytes().map(|b| b - b'0').collect();
    let h = r * 1.1;
    let w = h * 0.6;
    let gap = w * 0.25;
    let total = digits.len() as f32 * w + (digits.len() as f32 - 1.0) * gap;
    for (i, d) in digits.iter().enumerate() {
        let x0 = c - total / 2.0 + i as f32 * (w + gap);
        let t = Transform::from_row(w, 0.0, 0.0, h, x0, c - h / 2.0);
        draw_digit(&mut pm, *d, t, (r * 0.16).max(1.0), &black);
    }
    Some(pm)
}

type SpriteKey = (usize, u32, u32);

thread_local! {
    static SPRITES: RefCell<HashMap<SpriteKey, Option<Pixmap>>> = RefCell::new(HashMap::new());
}

fn with_node_sprite(label: usize, r: f32, line_width: f32, f: impl FnOnce(&Pixmap)) {
    SPRITES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let sprite = cache
            .entry((label, r.to_bits(), line_width.to_bits()))
            .or_insert_with(|| node_sprite(label, r, line_width));
        if let Some(s) = sprite {
            f(s);
        }
    });
}

/// Node centres in pixels of a `size`×`size` image for unit-square positions: the unit square is
/// mapped inside a border of one radius plus two pixels (so every ring lies wholly in the image),
/// and each centre is snapped to the centre of its pixel (`k + 0.5`), where the node sprite is
/// drawn, so that edges end exactly at the centres of the discs they join.
pub fn node_centres_px(pos: &[(f32, f32)], size: u32, style: &GraphStyle) -> Vec<(f32, f32)> {
    let s = size as f32;
    let border = node_radius_px(size, style) + 2.0;
    let span = s - 2.0 * border;
    pos.iter()
        .map(|&(x, y)| {
            (
                (border + x * span).floor() + 0.5,
                (border + y * span).floor() + 0.5,
            )
        })
        .collect()
}

/// Node radius in pixels of a `size`×`size` image.
pub fn node_radius_px(size: u32, style: &GraphStyle) -> f32 {
    style.node_radius * size as f32
}

/// Draws `g` at the given unit-square positions into a `size`×`size` grayscale image.
pub fn draw(g: &Graph, pos: &[(f32, f32)], size: u32, style: &GraphStyle) -> Gray {
    draw_px(g, &node_centres_px(pos, size, style), size, style)
}

/// Draws `g` with node centres given in pixels (as [`node_centres_px`] returns them) into a
/// `size`×`size` grayscale image: edges first, then each node as an opaque labelled disc.
pub fn draw_px(g: &Graph, px: &[(f32, f32)], size: u32, style: &GraphStyle) -> Gray {
    let Some(mut pm) = super::white_canvas(size) else {
        return Gray::empty();
    };
    let r = node_radius_px(size, style);
    let mut black = Paint::default();
    black.set_color_rgba8(0, 0, 0, 255);
    black.anti_alias = true;
    let mut pb = PathBuilder::new();
    for &(u, v) in &g.edges {
        let (Some(a), Some(b)) = (px.get(u as usize), px.get(v as usize)) else {
            continue;
        };
        pb.move_to(a.0, a.1);
        pb.line_to(b.0, b.1);
    }
    if let Some(path) = pb.finish() {
        let stroke = Stroke {
            width: style.line_width,
            ..Stroke::default()
        };
        pm.stroke_path(&path, &black, &stroke, Transform::identity(), None);
    }
    for (v, &(x, y)) in px.iter().enumerate() {
        with_node_sprite(v, r, style.line_width, |sprite| {
            let half = (sprite.width() / 2) as i32;
            pm.draw_pixmap(
                x.floor() as i32 - half,
                y.floor() as i32 - half,
                sprite.as_ref(),
                &PixmapPaint::default(),
                Transform::identity(),
                None,
            );
        });
    }
    Gray::from_pixmap(&pm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::keyed;

    #[test]
    fn layout_is_seeded_and_spread() {
        let g = Graph::new(8, [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (0, 7)]).unwrap();
        let a = spring_layout(&g, 60, &mut keyed(1, "l", 0, 0));
        let b = spring_layout(&g, 60, &mut keyed(1, "l", 0, 0));
        let c = spring_layout(&g, 60, &mut keyed(2, "l", 0, 0));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // No two nodes on top of each other.
        for i in 0..8 {
            for j in i + 1..8 {
                let d = ((a[i].0 - a[j].0).powi(2) + (a[i].1 - a[j].1).powi(2)).sqrt();
                assert!(d > 0.2, "{i} {j} {d}");
            }
        }
        let img = draw(&g, &a, 128, &GraphStyle::default());
        assert_eq!(img.pixels.len(), 128 * 128);
        assert!(img.pixels.iter().any(|&p| p < 50));
        let back = Gray::from_png(&img.to_png()).unwrap();
        assert_eq!(back, img);
    }

    /// Keyed layout streams of the property test: graph `i`, attempt `a`.
    fn rng_for(i: u64) -> impl FnMut(u64) -> chacha20::ChaCha8Rng {
        move |a| keyed(7, "test/layout", i, a)
    }

    #[test]
    fn clear_layouts_of_random_graphs_pass_the_check_in_pixels() {
        use crate::tasks::graph_coloring::GcGen;
        let style = GraphStyle::default();
        let size = 224;
        let (radius, margin) = (
            node_radius_px(size, &style),
            clearance_margin_px(size, style.line_width),
        );
        let mut attempts = 0;
        for i in 0..10_000u64 {
            let g = Graph::random(&mut keyed(7, "test/graph", i, 0), &GcGen::default());
            let l = clear_layout(&g, size, &style, MAX_LAYOUT_ATTEMPTS, rng_for(i))
                .unwrap_or_else(|e| panic!("graph {i} {:?}: {e}", g.edges));
            attempts += l.attempts;
            // The accepted placement is the one drawn from the last attempt's stream.
            let centres = layout_px(&g, size, &style, &mut rng_for(i)(l.attempts - 1));
            assert_eq!(centres, l.nodes.centres);
            assert_eq!(l.nodes.radius, radius);
            if let Some(v) = clearance_violation(&g.edges, &centres, radius, margin) {
                panic!("graph {i} {:?}: {v}", g.edges);
            }
        }
        eprintln!("mean attempts {:.3}", attempts as f64 / 10_000.0);
    }

    #[test]
    fn layout_attempts_are_bounded_and_failure_is_an_error() {
        // K5 with huge nodes cannot be drawn with clearance.
        let g = Graph::new(5, (0..5).flat_map(|u| (u + 1..5).map(move |v| (u, v)))).unwrap();
        let style = GraphStyle {
            node_radius: 0.2,
            ..GraphStyle::default()
        };
        let e = clear_layout(&g, 224, &style, 7, rng_for(0)).unwrap_err();
        assert_eq!(e.attempts, 7);
        assert!(e.to_string().contains("7 attempts"), "{e}");
    }

    /// Placements tried per random 7–9-node graph at several image sizes, and which rule the first
    /// placement breaks at 224 px (a measurement: `cargo test --release --lib
    /// layout_attempt_statistics -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn layout_attempt_statistics() {
        use crate::tasks::graph_coloring::GcGen;
        let style = GraphStyle::default();
        for size in [64u32, 96, 128, 224] {
            let (mut total, mut first, mut worst, mut failed) = (0u64, 0u64, 0u64, 0u64);
            let n = 20_000u64;
            let t = std::time::Instant::now();
            for i in 0..n {
                let g = Graph::random(&mut keyed(9, "stat/graph", i, 0), &GcGen::default());
                match clear_layout(&g, size, &style, MAX_LAYOUT_ATTEMPTS, |a| {
                    keyed(9, "stat/layout", i, a)
                }) {
                    Ok(l) => {
                        total += l.attempts;
                        first += u64::from(l.attempts == 1);
                        worst = worst.max(l.attempts);
                    }
                    Err(_) => failed += 1,
                }
            }
            eprintln!(
                "size {size}: mean attempts {:.3}, first-attempt pass {:.1} %, worst {worst}, failed {failed}, {:.1} µs/graph",
                total as f64 / (n - failed).max(1) as f64,
                100.0 * first as f64 / n as f64,
                t.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
        let mut kinds = std::collections::BTreeMap::new();
        for i in 0..20_000u64 {
            let g = Graph::random(&mut keyed(9, "stat/graph", i, 0), &GcGen::default());
            let c = layout_px(&g, 224, &style, &mut keyed(9, "stat/layout", i, 0));
            let v = clearance_violation(
                &g.edges,
                &c,
                node_radius_px(224, &style),
                clearance_margin_px(224, style.line_width),
            );
            let k = v
                .map(|v| {
                    format!("{v:?}")
                        .split([' ', '{'])
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_else(|| "ok".into());
            *kinds.entry(k).or_insert(0) += 1;
        }
        eprintln!("{kinds:?}");
    }
}
