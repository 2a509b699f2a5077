//! Sudoku drawings: a 9×9 grid with bold 3×3 boxes (or 4×4 with 2×2 boxes) and each given drawn
//! from a handwritten digit image, chosen per cell by a seeded draw.

use super::Gray;
use super::digits::{DigitBank, SIDE};
use crate::tasks::sudoku::Grid;
use crate::util::rng::keyed_str;
use rand::RngExt;
use std::cell::RefCell;
use std::collections::HashMap;
use tiny_skia::{Paint, PathBuilder, Stroke, Transform};

/// Draws the givens of `grid` into a `size`×`size` image. Digit images are picked with
/// randomness keyed by `(seed, item, cell)`.
pub fn draw(grid: &Grid, bank: &DigitBank, size: u32, seed: u64, item: &str) -> Gray {
    let n = grid.side().n();
    let mut img = empty_grid(size, n);
    if img.pixels.is_empty() {
        return img;
    }
    let cell = (size as f32 - 2.0 * PAD) / n as f32;
    let inner = (cell - 4.0).max(1.0);
    for (i, &d) in grid.cells().iter().enumerate() {
        if d == 0 {
            continue;
        }
        let choices = &bank.by_digit[d as usize];
        if choices.is_empty() {
            continue;
        }
        let k =
            keyed_str(seed, "render/sudoku-digit", item, i as u64).random_range(0..choices.len());
        let x0 = PAD + (i % n) as f32 * cell + (cell - inner) / 2.0;
        let y0 = PAD + (i / n) as f32 * cell + (cell - inner) / 2.0;
        blit(&mut img, &choices[k], x0, y0, inner);
    }
    img
}

/// Margin around the grid, in pixels.
const PAD: f32 = 2.0;

thread_local! {
    /// The empty grid of each image size and side, drawn once per thread.
    static GRIDS: RefCell<HashMap<(u32, usize), Gray>> = RefCell::new(HashMap::new());
}

/// The empty n×n grid (thin cell lines, bold box lines) at `size`, from the per-thread cache.
fn empty_grid(size: u32, n: usize) -> Gray {
    GRIDS.with(|g| {
        g.borrow_mut()
            .entry((size, n))
            .or_insert_with(|| draw_grid(size, n))
            .clone()
    })
}

/// Draws the empty grid of side `n` (9, or 4): its boxes are √n cells wide.
fn draw_grid(size: u32, n: usize) -> Gray {
    let Some(mut pm) = super::white_canvas(size) else {
        return Gray::empty();
    };
    let s = size as f32;
    let cell = (s - 2.0 * PAD) / n as f32;
    let boxes = if n == 4 { 2 } else { 3 };
    let mut black = Paint::default();
    black.set_color_rgba8(0, 0, 0, 255);
    for (width, step) in [(1.0f32, 1usize), (2.5, boxes)] {
        let mut pb = PathBuilder::new();
        for i in (0..=n).step_by(step) {
            let t = PAD + i as f32 * cell;
            pb.move_to(PAD, t);
            pb.line_to(s - PAD, t);
            pb.move_to(t, PAD);
            pb.line_to(t, s - PAD);
        }
        if let Some(path) = pb.finish() {
            let stroke = Stroke {
                width,
                ..Stroke::default()
            };
            pm.stroke_path(&path, &black, &stroke, Transform::identity(), None);
        }
    }
    Gray::from_pixmap(&pm)
}

/// Source coordinate of each destination pixel along one axis: the integer sample index and the
/// bilinear weight of the next sample.
fn taps(from: u32, to: u32, origin: f32, scale: f32) -> Vec<(i32, f32)> {
    (from..to)
        .map(|p| {
            let s = (p as f32 + 0.5 - origin) * scale - 0.5;
            let f = s.floor();
            (f as i32, s - f)
        })
        .collect()
}

/// Darkens `img` with a 28×28 ink image scaled (bilinear) into the square at (x0, y0) of side `w`.
///
/// A destination pixel's value is, term for term, `s(x,y)·(1−tx)·(1−ty) + s(x+1,y)·tx·(1−ty) +
/// s(x,y+1)·(1−tx)·ty + s(x+1,y+1)·tx·ty` over the samples `s` (zero outside the ink). The
/// products `s·(1−tx)` and `s·tx` depend on the sample row and the column only, so they are
/// computed once per ink row and each destination row is a contiguous, vectorizable loop.
fn blit(img: &mut Gray, ink: &[u8], x0: f32, y0: f32, w: f32) {
    // Only ink is drawn: a destination pixel whose four samples are all blank gets v = 0, which
    // leaves it as it is, so the loops run over the taps that reach the ink's bounding box.
    let Some((bx, by)) = ink_bounds(ink) else {
        return;
    };
    let scale = SIDE as f32 / w;
    let (xa, ya) = (x0.floor().max(0.0) as u32, y0.floor().max(0.0) as u32);
    let (xb, yb) = (
        ((x0 + w).ceil() as u32).min(img.width),
        ((y0 + w).ceil() as u32).min(img.height),
    );
    // A tap at sample i reads samples i and i + 1; taps grow with the pixel, so the columns that
    // reach the ink are one run.
    let reaches = |i: i32, (a, b): (i32, i32)| i + 1 >= a && i <= b;
    let cols: Vec<(u32, (i32, f32))> = (xa..xb)
        .zip(taps(xa, xb, x0, scale))
        .filter(|&(_, (ix, _))| reaches(ix, bx))
        .collect();
    let Some(&(cx, _)) = cols.first() else {
        return;
    };
    let n = cols.len();
    // Per ink row y in the bounding box: [s(x,y)·(1−tx) for each column, then s(x+1,y)·tx].
    let at = |row: &[u8], x: i32| -> f32 {
        usize::try_from(x)
            .ok()
            .and_then(|x| row.get(x))
            .map_or(0.0, |&v| f32::from(v))
    };
    let rows = (by.1 - by.0 + 1) as usize;
    let mut halves = vec![0.0f32; (rows + 1) * 2 * n]; // the last row is blank
    for (r, half) in halves.chunks_exact_mut(2 * n).take(rows).enumerate() {
        let row = &ink[(by.0 as usize + r) * SIDE..][..SIDE];
        let (left, right) = half.split_at_mut(n);
        for ((l, rt), &(_, (ix, tx))) in left.iter_mut().zip(right.iter_mut()).zip(&cols) {
            *l = at(row, ix) * (1.0 - tx);
            *rt = at(row, ix + 1) * tx;
        }
    }
    let half = |y: i32| -> (&[f32], &[f32]) {
        let r = if (by.0..=by.1).contains(&y) {
            (y - by.0) as usize
        } else {
            rows
        };
        halves[r * 2 * n..(r + 1) * 2 * n].split_at(n)
    };
    for (py, (iy, ty)) in (ya..yb).zip(taps(ya, yb, y0, scale)) {
        if !reaches(iy, by) {
            continue;
        }
        let ((ta, tb), (ba, bb)) = (half(iy), half(iy + 1));
        let line = (py * img.width + cx) as usize;
        let out = &mut img.pixels[line..line + n];
        let (uy, ly) = (1.0 - ty, ty);
        for ((((o, &a), &b), &c), &d) in out.iter_mut().zip(ta).zip(tb).zip(ba).zip(bb) {
            let v = a * uy + b * uy + c * ly + d * ly;
            *o = (*o).min(255 - round_to_byte(v));
        }
    }
}

/// The columns and rows (first, last) that hold ink, or `None` for a blank image.
fn ink_bounds(ink: &[u8]) -> Option<((i32, i32), (i32, i32))> {
    let mut any = [0u8; SIDE];
    let (mut y0, mut y1) = (i32::MAX, i32::MIN);
    for (y, row) in ink.chunks_exact(SIDE).enumerate() {
        let mut inked = 0u8;
        for (a, &v) in any.iter_mut().zip(row) {
            *a |= v;
            inked |= v;
        }
        if inked != 0 {
            (y0, y1) = (y0.min(y as i32), y as i32);
        }
    }
    let x0 = any.iter().position(|&v| v != 0)? as i32;
    let x1 = any.iter().rposition(|&v| v != 0)? as i32;
    Some(((x0, x1), (y0, y1)))
}

/// `v.round().clamp(0.0, 255.0) as u8` for `v ≥ 0` (half away from zero), without the libm call:
/// `v - trunc(v)` is exact below 2^23.
#[inline]
fn round_to_byte(v: f32) -> u8 {
    let t = v as i32;
    (t + i32::from(v - t as f32 >= 0.5)).clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::sudoku::Side;

    #[test]
    fn givens_add_ink_in_their_cells_only() {
        let bank = DigitBank::strokes(3, 0);
        let mut g = Grid::empty(Side::NINE);
        let empty = draw(&g, &bank, 252, 1, "x");
        g.cells_mut()[40] = 7; // centre cell
        let one = draw(&g, &bank, 252, 1, "x");
        inked_only_within(&empty, &one, 110..142);
        assert_eq!(one, draw(&g, &bank, 252, 1, "x"));
    }

    /// `after` differs from `before` in more than 30 pixels, all inside the square `span`².
    fn inked_only_within(before: &Gray, after: &Gray, span: std::ops::Range<u32>) {
        let w = before.width;
        let diff: Vec<u32> = (0..before.pixels.len() as u32)
            .filter(|&i| before.pixels[i as usize] != after.pixels[i as usize])
            .collect();
        assert!(diff.len() > 30, "{} pixels changed", diff.len());
        for i in diff {
            let (x, y) = (i % w, i / w);
            assert!(span.contains(&x) && span.contains(&y), "{x},{y}");
        }
    }

    #[test]
    fn four_by_four_cells_are_a_quarter_of_the_grid() {
        let bank = DigitBank::strokes(3, 0);
        let mut g = Grid::empty(Side::FOUR);
        let empty = draw(&g, &bank, 96, 1, "x");
        // Two bold lines cross the middle (the 2×2 boxes), not the 9×9 grid's thirds.
        let dark = |img: &Gray, x: u32, y: u32| img.pixels[(y * 96 + x) as usize] < 128;
        assert!(dark(&empty, 48, 10) && dark(&empty, 10, 48));
        assert!(!dark(&empty, 32, 10) && !dark(&empty, 10, 32));
        g.cells_mut()[5] = 3; // row 2, column 2: pixels 25..48
        let one = draw(&g, &bank, 96, 1, "x");
        inked_only_within(&empty, &one, 25..48);
    }

    /// The straightforward bilinear blit, sample by sample with bounds checks: the reference the
    /// fast blit must match pixel for pixel.
    fn blit_reference(img: &mut Gray, ink: &[u8], x0: f32, y0: f32, w: f32) {
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

    #[test]
    fn fast_blit_matches_the_reference_pixel_for_pixel() {
        let bank = DigitBank::strokes(4, 3);
        for size in [64u32, 144, 224, 252] {
            let cell = (size as f32 - 2.0 * PAD) / 9.0;
            let inner = (cell - 4.0).max(1.0);
            for (k, digit) in (1..10).enumerate() {
                let ink = &bank.by_digit[digit][k % 4];
                let (x0, y0) = (
                    PAD + k as f32 * cell + 2.0,
                    PAD + (8 - k) as f32 * cell + 2.0,
                );
                let (mut a, mut b) = (empty_grid(size, 9), draw_grid(size, 9));
                assert_eq!(a, b);
                blit(&mut a, ink, x0, y0, inner);
                blit_reference(&mut b, ink, x0, y0, inner);
                assert_eq!(a, b, "size {size} digit {digit}");
            }
        }
    }
}
