//! Sudoku drawings: a 9×9 grid with bold 3×3 boxes and each given drawn from a handwritten digit
//! image, chosen per cell by a seeded draw.

use super::Gray;
use super::digits::{DigitBank, SIDE};
use crate::tasks::sudoku::Grid;
use crate::util::rng::keyed_str;
use rand::RngExt;
use tiny_skia::{Paint, PathBuilder, Stroke, Transform};

/// Draws the givens of `grid` into a `size`×`size` image. Digit images are picked with
/// randomness keyed by `(seed, item, cell)`.
pub fn draw(grid: &Grid, bank: &DigitBank, size: u32, seed: u64, item: &str) -> Gray {
    let Some(mut pm) = super::white_canvas(size) else {
        return Gray::empty();
    };
    let s = size as f32;
    let pad = 2.0f32;
    let cell = (s - 2.0 * pad) / 9.0;
    let mut black = Paint::default();
    black.set_color_rgba8(0, 0, 0, 255);
    for (width, step) in [(1.0f32, 1usize), (2.5, 3)] {
        let mut pb = PathBuilder::new();
        for i in (0..=9).step_by(step) {
            let t = pad + i as f32 * cell;
            pb.move_to(pad, t);
            pb.line_to(s - pad, t);
            pb.move_to(t, pad);
            pb.line_to(t, s - pad);
        }
        if let Some(path) = pb.finish() {
            let stroke = Stroke {
                width,
                ..Stroke::default()
            };
            pm.stroke_path(&path, &black, &stroke, Transform::identity(), None);
        }
    }
    let mut img = Gray::from_pixmap(&pm);
    let inner = (cell - 4.0).max(1.0);
    for (i, &d) in grid.0.iter().enumerate() {
        if d == 0 {
            continue;
        }
        let choices = &bank.by_digit[d as usize];
        if choices.is_empty() {
            continue;
        }
        let k =
            keyed_str(seed, "render/sudoku-digit", item, i as u64).random_range(0..choices.len());
        let x0 = pad + (i % 9) as f32 * cell + (cell - inner) / 2.0;
        let y0 = pad + (i / 9) as f32 * cell + (cell - inner) / 2.0;
        blit(&mut img, &choices[k], x0, y0, inner);
    }
    img
}

/// Darkens `img` with a 28×28 ink image scaled (bilinear) into the square at (x0, y0) of side `w`.
fn blit(img: &mut Gray, ink: &[u8], x0: f32, y0: f32, w: f32) {
    let scale = SIDE as f32 / w;
    let (xa, ya) = (x0.floor().max(0.0) as u32, y0.floor().max(0.0) as u32);
    let (xb, yb) = (
        ((x0 + w).ceil() as u32).min(img.width),
        ((y0 + w).ceil() as u32).min(img.height),
    );
    let at = |x: i32, y: i32| -> f32 {
        if x < 0 || y < 0 || x >= SIDE as i32 || y >= SIDE as i32 {
            0.0
        } else {
            ink[y as usize * SIDE + x as usize] as f32
        }
    };
    for py in ya..yb {
        for px in xa..xb {
            let sx = (px as f32 + 0.5 - x0) * scale - 0.5;
            let sy = (py as f32 + 0.5 - y0) * scale - 0.5;
            let (fx, fy) = (sx.floor(), sy.floor());
            let (tx, ty) = (sx - fx, sy - fy);
            let (ix, iy) = (fx as i32, fy as i32);
            let v = at(ix, iy) * (1.0 - tx) * (1.0 - ty)
                + at(ix + 1, iy) * tx * (1.0 - ty)
                + at(ix, iy + 1) * (1.0 - tx) * ty
                + at(ix + 1, iy + 1) * tx * ty;
            let o = &mut img.pixels[(py * img.width + px) as usize];
            *o = (*o).min(255 - v.round().clamp(0.0, 255.0) as u8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn givens_add_ink_in_their_cells_only() {
        let bank = DigitBank::strokes(3, 0);
        let mut g = Grid([0; 81]);
        let empty = draw(&g, &bank, 252, 1, "x");
        g.0[40] = 7; // centre cell
        let one = draw(&g, &bank, 252, 1, "x");
        let diff: Vec<usize> = (0..empty.pixels.len())
            .filter(|&i| empty.pixels[i] != one.pixels[i])
            .collect();
        assert!(diff.len() > 30);
        for i in diff {
            let (x, y) = (i % 252, i / 252);
            assert!(
                (110..142).contains(&x) && (110..142).contains(&y),
                "{x},{y}"
            );
        }
        assert_eq!(one, draw(&g, &bank, 252, 1, "x"));
    }
}
