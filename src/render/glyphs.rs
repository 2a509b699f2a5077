//! A small stroke font for the digits 0–9: each digit is a few polylines in a unit box (x right,
//! y down). Used for graph node labels and, with random jitter, as the fallback "handwritten"
//! digits when the MNIST package is not available.

use tiny_skia::{LineCap, LineJoin, Paint, PathBuilder, Pixmap, Stroke, Transform};

fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32) -> Vec<(f32, f32)> {
    (0..=20)
        .map(|i| {
            let t = i as f32 / 20.0 * std::f32::consts::TAU;
            (cx + rx * t.cos(), cy + ry * t.sin())
        })
        .collect()
}

/// Polylines of digit `d` in the unit box.
pub fn strokes(d: u8) -> Vec<Vec<(f32, f32)>> {
    match d {
        0 => vec![ellipse(0.5, 0.5, 0.4, 0.5)],
        1 => vec![vec![(0.3, 0.2), (0.58, 0.0), (0.58, 1.0)]],
        2 => vec![vec![
            (0.1, 0.25),
            (0.25, 0.05),
            (0.5, 0.0),
            (0.75, 0.05),
            (0.9, 0.25),
            (0.85, 0.45),
            (0.1, 1.0),
            (0.92, 1.0),
        ]],
        3 => vec![vec![
            (0.1, 0.1),
            (0.4, 0.0),
            (0.78, 0.08),
            (0.85, 0.28),
            (0.48, 0.47),
            (0.85, 0.62),
            (0.9, 0.85),
            (0.6, 1.0),
            (0.1, 0.9),
        ]],
        4 => vec![vec![(0.7, 1.0), (0.7, 0.0), (0.05, 0.7), (0.95, 0.7)]],
        5 => vec![vec![
            (0.85, 0.0),
            (0.2, 0.0),
            (0.15, 0.45),
            (0.5, 0.38),
            (0.85, 0.55),
            (0.9, 0.8),
            (0.6, 1.0),
            (0.1, 0.92),
        ]],
        6 => vec![vec![
            (0.8, 0.05),
            (0.5, 0.0),
            (0.2, 0.2),
            (0.1, 0.6),
            (0.2, 0.9),
            (0.5, 1.0),
            (0.8, 0.9),
            (0.9, 0.7),
            (0.8, 0.5),
            (0.5, 0.43),
            (0.2, 0.55),
            (0.1, 0.65),
        ]],
        7 => vec![vec![(0.08, 0.0), (0.92, 0.0), (0.35, 1.0)]],
        8 => vec![
            ellipse(0.5, 0.24, 0.3, 0.24),
            ellipse(0.5, 0.72, 0.38, 0.28),
        ],
        _ => vec![
            ellipse(0.5, 0.3, 0.36, 0.3),
            vec![(0.86, 0.3), (0.8, 0.7), (0.6, 1.0), (0.2, 0.95)],
        ],
    }
}

/// Strokes digit `d` into `pixmap`: the unit box is mapped by `box_to_pixels`.
pub fn draw_digit(pixmap: &mut Pixmap, d: u8, box_to_pixels: Transform, width: f32, paint: &Paint) {
    let mut pb = PathBuilder::new();
    for line in strokes(d) {
        let mut pts = line.into_iter();
        if let Some((x, y)) = pts.next() {
            pb.move_to(x, y);
            for (x, y) in pts {
                pb.line_to(x, y);
            }
        }
    }
    let Some(path) = pb.finish() else { return };
    let Some(path) = path.transform(box_to_pixels) else {
        return;
    };
    let stroke = Stroke {
        width,
        line_cap: LineCap::Round,
        line_join: LineJoin::Round,
        ..Stroke::default()
    };
    pixmap.stroke_path(&path, paint, &stroke, Transform::identity(), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_digit_draws_distinct_ink() {
        let mut seen = Vec::new();
        for d in 0..10 {
            let mut p = Pixmap::new(28, 28).unwrap();
            let mut paint = Paint::default();
            paint.set_color_rgba8(255, 255, 255, 255);
            draw_digit(
                &mut p,
                d,
                Transform::from_row(16.0, 0.0, 0.0, 20.0, 6.0, 4.0),
                2.0,
                &paint,
            );
            let ink: Vec<u8> = p.data().chunks(4).map(|c| c[0]).collect();
            assert!(ink.iter().filter(|&&v| v > 128).count() > 20, "digit {d}");
            assert!(!seen.contains(&ink));
            seen.push(ink);
        }
    }
}
