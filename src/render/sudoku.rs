//! Sudoku drawings: a 9×9 grid with bold 3×3 boxes and each given drawn from a handwritten digit
//! image, chosen per cell by a seeded draw.

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
    let mut img = empty_grid(size);
    if img.pixels.is_empty() {
        return img;
    }
    let cell = (size as f32 - 2.0 * PAD) / 9.0;
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
        let x0 = PAD + (i % 9) as f32 * cell + (cell - inner) / 2.0;
        let y0 = PAD + (i / 9) as f32 * cell + (cell - inner) / 2.0;
        blit(&mut img, &choices[k], x0, y0, inner);
    }
    img
}

/// Margin around the grid, in pixels.
const PAD: f32 = 2.0;

thread_local! {
    /// The empty grid of each size, drawn once per thread.
    static GRIDS: RefCell<HashMap<u32, Gray>> = RefCell::new(HashMap::new());
}

/// The empty 9×9 grid (thin cell lines, bold box lines) at `size`, from the per-thread cache.
fn empty_grid(size: u32) -> Gray {
    GRIDS.with(|g| {
        g.borrow_mut()
            .entry(size)
            .or_insert_with(|| draw_grid(size))
            .clone()
    })
}

fn draw_grid(size: u32) -> Gray {
    let Some(mut pm) = super::white_canvas(size) else {
        return Gray::empty();
    };
    let s = size as f32;
    let cell = (s - 2.0 * PAD) / 9.0;
    let mut black = Paint::default();
    black.set_color_rgba8(0, 0, 0, 255);
    for (width, step) in [(1.0f32, 1usize), (2.5, 3)] {
        let mut pb = PathBuilder::new();
        for i in (0..=9).step_by(step) {
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
fn blit(img: &mut Gray, ink: &[u8], x0: f32, y0: f32, w: f32) {
    let scale = SIDE as f32 / w;
    let (xa, ya) = (x0.floor().max(0.0) as u32, y0.floor().max(0.0) as u32);
    let (xb, yb) = (
        ((x0 + w).ceil() as u32).min(img.width),
        ((y0 + w).ceil() as u32).min(img.height),
    );
    // The ink inside a border of zeros wide enough for every tap (a destination pixel at most
    // one pixel outside the square reaches `scale + 1` samples out), so taps read without checks.
    let border = scale.ceil() as usize + 2;
    let p = SIDE + 2 * border;
    let mut padded = vec![0.0f32; p * p];
    for y in 0..SIDE {
        for x in 0..SIDE {
            padded[(y + border) * p + x + border] = ink[y * SIDE + x] as f32;
        }
    }
    // Every tap lies inside the padded ink, so a sample is one index: the row's offset plus the
    // column's (the arithmetic is the reference's, term for term).
    let offset = |i: i32| (i + border as i32).clamp(0, (p - 2) as i32) as usize;
    let cols: Vec<(usize, f32)> = taps(xa, xb, x0, scale)
        .into_iter()
        .map(|(ix, tx)| (offset(ix), tx))
        .collect();
    let rows: Vec<(usize, f32)> = taps(ya, yb, y0, scale)
        .into_iter()
        .map(|(iy, ty)| (offset(iy) * p, ty))
        .collect();
    for (py, &(r, ty)) in (ya..yb).zip(&rows) {
        let line = (py * img.width) as usize;
        let (top, bottom) = (&padded[r..r + p], &padded[r + p..r + 2 * p]);
        let out = &mut img.pixels[line + xa as usize..line + xb as usize];
        for (o, &(c, tx)) in out.iter_mut().zip(&cols) {
            let v = top[c] * (1.0 - tx) * (1.0 - ty)
                + top[c + 1] * tx * (1.0 - ty)
                + bottom[c] * (1.0 - tx) * ty
                + bottom[c + 1] * tx * ty;
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
                let (mut a, mut b) = (empty_grid(size), draw_grid(size));
                assert_eq!(a, b);
                blit(&mut a, ink, x0, y0, inner);
                blit_reference(&mut b, ink, x0, y0, inner);
                assert_eq!(a, b, "size {size} digit {digit}");
            }
        }
    }
}
