"""What the ranked directions do on the DCGAN of gan-face-generate (`--gan dcgan-faces`).

For each ranking.json given, the top entries (as `rank` ordered them, with the sign it scored):
a picture of rows G(z) | G(z + r h) | lighting mask for a few prior latents, and the masks' mean
foreground fraction over `--n` latents, for +h as ranked and for the opposite sign. The picture
is what gen-synth's mask rule makes of that direction (after the size and histogram filters
nothing else changes a mask), so it shows what a shard set built on it would hold.

    python benchmarks/dcgan_faces.py runs/rank-axes/ranking.json runs/rank/ranking.json --out pics/
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import cv2
import numpy as np


def _tiles(x: np.ndarray, xs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[3 rows x N columns] uint8 RGB picture, each tile upscaled 2x (64 -> 128 px)."""
    from finder.rank import image_grid, unit_to_uint8
    from generator.preview import signed_to_uint8

    def up(a):
        return cv2.resize(a, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)

    return image_grid([[up(signed_to_uint8(a)) for a in x], [up(signed_to_uint8(a)) for a in xs],
                       [up(unit_to_uint8(m)) for m in mask]])


def _labelled_stack(pictures: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """The pictures one above the other, each under a dark band with its label."""
    from generator.preview import label_band

    return np.concatenate([part for pic, label in zip(pictures, labels)
                           for part in (label_band(pic.shape[1], label), pic)], axis=0)


@click.command()
@click.argument("rankings", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--candidates", "cand_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="The .npy of candidates each ranking scored, in order ('axes' rankings need none).")
@click.option("--top", default=3, show_default=True, help="Entries per ranking.")
@click.option("--n", default=256, show_default=True, help="Prior latents for the foreground fractions.")
@click.option("--show", default=6, show_default=True, help="Latents in each picture.")
@click.option("--shift", default=5.0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
def main(rankings, cand_files, top, n, show, shift, out, cache_dir):
    from masking import rules as masks
    from gans.loader import load_gan

    gan = load_gan("dcgan-faces", cache_dir=cache_dir)
    z = np.random.default_rng(2024).standard_normal((n, gan.latent_dim)).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    files = iter(cand_files)
    report = {}
    for path in rankings:
        r = json.loads(path.read_text())
        source = r["candidates"]["source"]
        cands = np.eye(gan.latent_dim, dtype=np.float32) if source == "axes" else np.load(next(files))
        cands = cands / np.linalg.norm(cands, axis=1, keepdims=True)
        entries = {e["entry"]: e for e in r["entries"]}
        rows = []
        print(f"{path}: candidates {source}")
        print(f"  {'rank':>4} {'cand':>5} {'sign':>5} {'L_h':>7} {'D_h':>7}  {'fg +h':>6} {'fg -h':>6}  picture")
        for rank, entry in enumerate(r["order"][:top], 1):
            e = entries[entry]
            h = e["sign"] * cands[e["candidate"]]
            frac = {}
            for sign in (1, -1):
                x, xs = gan.generate_pair(z, sign * h, shift)
                frac[sign] = float(masks.lighting_mask(x, xs).mean())
            x, xs = gan.generate_pair(z[:show], h, shift)
            pic = out / f"{path.parent.name}-top{rank}.png"
            cv2.imwrite(str(pic), _tiles(x, xs, masks.lighting_mask(x, xs))[..., ::-1])
            rows.append({"rank": rank, "candidate": e["candidate"], "sign": e["sign"], "L_h": e["L_h"],
                         "D_h": e["D_h"], "fg_plus": frac[1], "fg_minus": frac[-1], "picture": str(pic)})
            print(f"  {rank:>4} {e['candidate']:>5} {e['sign']:>+5d} {e['L_h']:7.4f} {e['D_h']:7.4f}  "
                  f"{frac[1]:6.3f} {frac[-1]:6.3f}  {pic}")
        report[str(path)] = rows
        sheet = out / f"{path.parent.name}-top{top}.jpg"
        cv2.imwrite(str(sheet), _labelled_stack(
            [cv2.imread(r["picture"]) for r in rows],
            [f"#{r['rank']}: candidate {r['candidate']} ({'+' if r['sign'] > 0 else '-'}h)   L_h {r['L_h']:.4f}  "
             f"D_h {r['D_h']:.4f}   fg {r['fg_plus']:.2f} (opposite sign {r['fg_minus']:.2f})" for r in rows]),
            [cv2.IMWRITE_JPEG_QUALITY, 90])
        print(f"  sheet: {sheet}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
