//! Graph drawings: a seeded force-directed (Fruchterman–Reingold, as networkx's spring layout)
//! placement with a random start and rotation, then edges as lines and nodes as labelled circles.

use super::Gray;
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

/// Draws `g` at the given unit-square positions into a `size`×`size` grayscale image.
pub fn draw(g: &Graph, pos: &[(f32, f32)], size: u32, style: &GraphStyle) -> Gray {
    let Some(mut pm) = super::white_canvas(size) else {
        return Gray::empty();
    };
    let s = size as f32;
    let r = style.node_radius * s;
    let margin = r + 2.0;
    let px: Vec<(f32, f32)> = pos
        .iter()
        .map(|&(x, y)| {
            (
                margin + x * (s - 2.0 * margin),
                margin + y * (s - 2.0 * margin),
            )
        })
        .collect();
    let mut black = Paint::default();
    black.set_color_rgba8(0, 0, 0, 255);
    black.anti_alias = true;
    let mut pb = PathBuilder::new();
    for &(u, v) in &g.edges {
        let (a, b) = (px[u as usize], px[v as usize]);
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
                x as i32 - half,
                y as i32 - half,
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
}
