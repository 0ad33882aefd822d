#!/usr/bin/env python3
"""Held-out forearm-radiograph-like dataset for checking that settings generalise.

What it draws (8-bit greyscale, SIZE x SIZE, rendered at 2x and box-downsampled):
  * a forearm seen end-to-end: two roughly parallel long bones (radius/ulna-like),
    tapered, slightly bowed, projected as hollow tubes so the cortical edges are
    brighter than the medulla, with faint trabecular texture; the wider bone flares
    towards a wrist end that is inside the frame in ~60% of images;
  * a faint soft-tissue envelope around both bones, with faint skin-fold lines;
  * a smooth background gradient, film grain, random window/gamma;
  * a collimation border (bright or dark band with a soft edge) on one or two sides;
  * a small burnt-in text-like annotation block (random 3x5 glyphs) outside the arm.
Class "normal": nothing else.  Class "abnormal": one SUBTLE finding on one bone only,
either (70%) a hairline cortical break -- a thin oblique line along which bone density
drops by 25-45% (partial attenuation, never black), sometimes only part of the way
across -- or (30%) a slight periosteal bulge, a thin extra shell on one side of a bone.

Why: the project's built-in synthetic data (one bright capsule "bone" with black gaps
or dark blobs, L/R glyphs, a bright label rectangle) saturates quickly.  This generator
is designed independently of it, with a finding that is hard but learnable, so there is
headroom to see whether tuned settings carry over to data the project never saw.

Usage:
  python3 benches/heldout_radiographs.py OUT_DIR [--size 64] [--train 300] [--val 200] [--seed 0]
  apga-gpu train --data folder:OUT_DIR ...
Layout: OUT_DIR/{train,val}/{normal,abnormal}/*.png (balanced), and the ground-truth
ROI masks (union of the bones, 0/255) in the sibling folder OUT_DIR_roi/{train,val}/
{normal,abnormal}/<same name>.png, kept outside OUT_DIR so the loader never sees them.
Note: the folder loader numbers classes alphabetically (abnormal=0, normal=1).
Deterministic: every image uses numpy.random.default_rng([seed, split, index]).
Dependencies: numpy and Pillow only.
"""
import argparse
import os

import numpy as np
from PIL import Image

SS = 2  # supersampling factor


def sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def smooth_noise(rng, n, cells):
    """Low-frequency noise in [-1, 1]-ish, n x n, from a cells x cells random grid."""
    g = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(g, "F").resize((n, n), Image.BICUBIC))


def bone(t, s, c, k, w0, taper, t_end, flare, ri, med):
    """Projected density of a hollow tapered bowed tube; returns (density, r, centre, half-width)."""
    sc = c + k * t * t
    w = w0 * (1.0 + taper * t)
    if t_end is not None:
        w = w * (1.0 + flare * np.exp(-(np.minimum(t - t_end, 0) / 0.15) ** 2))
        dt = np.maximum(t - t_end, 0.0) * 2.5  # squat, flattish end
    else:
        dt = 0.0
    r = np.sqrt((s - sc) ** 2 + dt ** 2) / w
    dens = np.sqrt(np.maximum(1 - r * r, 0)) - (1 - med) * np.sqrt(np.maximum(ri * ri - r * r, 0))
    return dens * w / 0.05, r, sc, w


def render(rng, size, abnormal):
    n = size * SS
    frng = np.random.default_rng(rng.integers(2**63))  # finding only: same image otherwise
    x = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    u, v = np.meshgrid(x, x)  # u: column, v: row
    th = rng.uniform(-0.45, 0.45) + (np.pi / 2 if rng.random() < 0.25 else 0.0)
    sgn = 1.0 if rng.random() < 0.5 else -1.0
    t = sgn * (np.cos(th) * v + np.sin(th) * u)  # along the forearm
    s = -np.sin(th) * v + np.cos(th) * u  # across it
    s0, sep = rng.normal(0, 0.05), rng.uniform(0.15, 0.22)
    t_end = rng.uniform(0.22, 0.42) if rng.random() < 0.6 else None
    specs = []
    for i, side in enumerate(rng.permutation([-1.0, 1.0])):
        wide = i == 0  # radius-like: wider, bowed more, flares distally
        specs.append(dict(
            c=s0 + side * sep / 2,
            k=rng.uniform(-0.25, 0.25) if wide else rng.uniform(-0.1, 0.1),
            w0=rng.uniform(0.048, 0.062) if wide else rng.uniform(0.038, 0.05),
            taper=rng.uniform(0.1, 0.5) * (1 if wide else -1),
            t_end=None if t_end is None else t_end + (0 if wide else rng.uniform(-0.06, 0.02)),
            flare=rng.uniform(0.4, 0.8) if wide else rng.uniform(0.0, 0.2),
            ri=rng.uniform(0.6, 0.75), med=rng.uniform(0.1, 0.3)))
    # soft tissue envelope: elliptical cross-section, slightly wider than the bones
    tw = sep / 2 + 0.07 + rng.uniform(0.06, 0.13)
    tc = s0 + rng.normal(0, 0.015) + 0.03 * rng.standard_normal() * t
    tissue = np.sqrt(np.maximum(1 - ((s - tc) / tw) ** 2, 0))
    if t_end is not None:
        tissue *= sigmoid((t_end + rng.uniform(0.12, 0.25) - t) / 0.03)
    tissue = tissue * (1 + 0.06 * smooth_noise(rng, n, 5))
    for _ in range(rng.integers(0, 3)):  # faint skin folds, in both classes
        a, b = rng.uniform(-1.2, 1.2), rng.uniform(-0.4, 0.4)
        d = np.abs(s - tc - b * tw - a * 0.05 * np.sin(6 * t + rng.uniform(0, 6)))
        tissue += rng.uniform(-0.08, 0.08) * np.exp(-(d / 0.006) ** 2) * (tissue > 0.05)
    dens, roi = np.zeros_like(u), np.zeros(u.shape, bool)
    tex = 1 + 0.08 * smooth_noise(rng, n, max(8, size // 5))
    hit = frng.integers(2)
    for i, b in enumerate(specs):
        d, r, sc, w = bone(t, s, **b)
        d *= tex
        roi |= r < 1
        if abnormal and i == hit:
            lo = -0.25
            hi = 0.25 if b["t_end"] is None else min(0.25, b["t_end"] - 0.08)
            tf = frng.uniform(lo, hi)
            scf = b["c"] + b["k"] * tf * tf
            if frng.random() < 0.7:  # hairline cortical break
                phi = frng.uniform(0.5, 1.1) * frng.choice([-1, 1])
                dl = np.abs(-(t - tf) * np.sin(phi) + (s - scf) * np.cos(phi))
                line = np.exp(-(dl / (frng.uniform(0.5, 0.8) / size)) ** 2)
                if frng.random() < 0.5:  # incomplete: from one cortex part-way across
                    side = frng.choice([-1, 1])
                    edge = frng.uniform(-0.3, 0.4)
                    line *= sigmoid((side * (s - sc) / w - edge) / 0.1)
                d *= 1 - frng.uniform(0.25, 0.45) * line
            else:  # periosteal bulge / reaction on one side
                side = frng.choice([-1, 1])
                L = frng.uniform(0.035, 0.07)
                shell = np.exp(-((side * (s - sc) / w - 1.08) / 0.12) ** 2)
                d += frng.uniform(0.25, 0.4) * np.exp(-((t - tf) / L) ** 2) * shell
        dens += d
    gx, gy = rng.normal(0, 0.08, 2)
    img = rng.uniform(0.05, 0.15) + gx * u + gy * v + 0.02 * smooth_noise(rng, n, 3)
    img = img + rng.uniform(0.12, 0.2) * tissue + rng.uniform(0.38, 0.5) * dens
    img = img.reshape(size, SS, size, SS).mean((1, 3))
    roi = roi.reshape(size, SS, size, SS).mean((1, 3)) > 0.5
    # collimation border on one or two edges (soft edge)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for e in rng.choice(4, rng.integers(1, 3), replace=False):
        pos = [xx, 1 - xx, yy, 1 - yy][e]
        m = sigmoid((rng.uniform(0.04, 0.12) - pos) / 0.01)
        img = img * (1 - m) + m * (rng.uniform(0.7, 0.9) if rng.random() < 0.6 else 0.02)
    # film grain: fine + slightly blurred component
    img = img + rng.normal(0, rng.uniform(0.015, 0.035), img.shape)
    img = img + 0.02 * smooth_noise(rng, size, size // 3)
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    # burnt-in text block at the spot (corners / edge middles) with least tissue
    g = max(1, size // 64)
    rows, cols = rng.integers(1, 3), rng.integers(3, 6)
    bh, bw = rows * 6 * g, cols * 4 * g
    tis = tissue.reshape(size, SS, size, SS).mean((1, 3)) + roi
    ys, xs = (2, (size - bh) // 2, size - bh - 2), (2, (size - bw) // 2, size - bw - 2)
    spots = [(ys[i], xs[j]) for i in range(3) for j in range(3) if (i, j) != (1, 1)]
    y0, x0 = min(spots, key=lambda p: tis[p[0]:p[0] + bh, p[1]:p[1] + bw].sum() + rng.random() * 1e-3)
    ink = rng.uniform(0.85, 1.0)
    for rr in range(rows):
        for cc in range(cols):
            glyph = np.kron(rng.random((5, 3)) < 0.55, np.ones((g, g), bool))
            yy0, xx0 = y0 + rr * 6 * g, x0 + cc * 4 * g
            img[yy0:yy0 + 5 * g, xx0:xx0 + 3 * g][glyph] = ink
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), roi


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train", type=int, default=300)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = os.path.normpath(a.out_dir)
    counts, roi_frac = {}, []
    for sid, (split, total) in enumerate([("train", a.train), ("val", a.val)]):
        for idx in range(total):
            cls = ("normal", "abnormal")[idx % 2]
            rng = np.random.default_rng([a.seed, sid, idx])
            img, roi = render(rng, a.size, cls == "abnormal")
            name = f"{split}_{idx:05d}.png"
            for root, arr in ((out, img), (out + "_roi", roi.astype(np.uint8) * 255)):
                d = os.path.join(root, split, cls)
                os.makedirs(d, exist_ok=True)
                Image.fromarray(arr, "L").save(os.path.join(d, name))
            counts[(split, cls)] = counts.get((split, cls), 0) + 1
            roi_frac.append(roi.mean())
    parts = " ".join(f"{s}/{c}={n}" for (s, c), n in sorted(counts.items()))
    print(f"wrote {out} ({a.size}x{a.size}, seed {a.seed}): {parts}; "
          f"mean ROI fraction {np.mean(roi_frac):.3f}; masks in {out}_roi")


if __name__ == "__main__":
    main()
