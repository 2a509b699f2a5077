"""Pillow baseline for Sudoku rendering, the same work as `asymm bench --suite data`'s
"sudoku render + PNG, 252x252" row: a 9x9 grid with bold box lines, 30 givens drawn from 28x28
digit images scaled bilinearly into their cells and darkened onto the grid, then a grayscale PNG
with fast compression. One process, one thread.

    python benches/render_pillow.py --items 2000
"""

import argparse
import io
import random
import time

from PIL import Image, ImageChops, ImageDraw


def digit_bank(rng, per_digit=8):
    # Random 28x28 ink blobs stand in for handwritten digits: scaling and compositing cost the
    # same whatever the strokes look like.
    bank = []
    for _ in range(10):
        imgs = []
        for _ in range(per_digit):
            ink = bytes(rng.randrange(256) if rng.random() < 0.2 else 0 for _ in range(28 * 28))
            imgs.append(Image.frombytes("L", (28, 28), ink))
        bank.append(imgs)
    return bank


def render(grid, bank, size, rng):
    pad = 2.0
    cell = (size - 2 * pad) / 9.0
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    for width, step in ((1, 1), (3, 3)):
        for i in range(0, 10, step):
            t = pad + i * cell
            d.line([(pad, t), (size - pad, t)], fill=0, width=width)
            d.line([(t, pad), (t, size - pad)], fill=0, width=width)
    inner = max(int(cell - 4), 1)
    for i, v in enumerate(grid):
        if v == 0:
            continue
        glyph = rng.choice(bank[v])
        scaled = glyph.resize((inner, inner), Image.BILINEAR)
        x0 = int(pad + (i % 9) * cell + (cell - inner) / 2)
        y0 = int(pad + (i // 9) * cell + (cell - inner) / 2)
        box = (x0, y0, x0 + inner, y0 + inner)
        region = img.crop(box)
        img.paste(ImageChops.darker(region, ImageChops.invert(scaled)), box)
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--size", type=int, default=252)
    a = ap.parse_args()
    rng = random.Random(1)
    bank = digit_bank(rng)
    grids = []
    for _ in range(a.items):
        g = [0] * 81
        for k in rng.sample(range(81), 30):
            g[k] = rng.randrange(1, 10)
        grids.append(g)
    t = time.perf_counter()
    for g in grids:
        render(g, bank, a.size, rng)
    rate = a.items / (time.perf_counter() - t)
    print(f"| sudoku render + PNG, {a.size}x{a.size} (Pillow) | {rate:.0f} images/s |")


if __name__ == "__main__":
    main()
