"""``python -m flare_operator.datagen --sites 2 --out DIR --seed 0``; with ``--corpus N``, instead, N
unlabelled public sequences for pretraining, one per line, in ``OUT`` (a file)."""

from __future__ import annotations

import argparse
import json
import sys

from .generator import GeneratorConfig, public_corpus, write_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flare_operator.datagen", description=__doc__)
    p.add_argument("--sites", type=int, default=2)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-per-site", type=int, default=600)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (small = more non-IID)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--min-len", type=int, default=40)
    p.add_argument("--max-len", type=int, default=90)
    p.add_argument("--motif-noise", type=float, default=0.08)
    p.add_argument("--label-noise", type=float, default=0.03)
    p.add_argument("--test-samples", type=int, default=400)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--site-names", default="", help="comma-separated names (default site-1..N)")
    p.add_argument("--corpus", type=int, default=0,
                   help="write N unlabelled public sequences to OUT (a file) instead of the sites' data")
    a = p.parse_args(argv)
    if a.corpus:
        try:
            seqs = public_corpus(a.corpus, a.seed, a.min_len, a.max_len, a.motif_noise)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        with open(a.out, "w") as f:
            f.write("\n".join(seqs) + "\n")
        print(json.dumps({"corpus": a.out, "sequences": len(seqs)}))
        return 0
    cfg = GeneratorConfig(
        sites=a.sites,
        samples_per_site=a.samples_per_site,
        alpha=a.alpha,
        val_fraction=a.val_fraction,
        min_len=a.min_len,
        max_len=a.max_len,
        motif_noise=a.motif_noise,
        label_noise=a.label_noise,
        test_samples=a.test_samples,
        seed=a.seed,
        fmt=a.format,
        site_names=[s for s in a.site_names.split(",") if s] or None,
    )
    try:
        manifest = write_dataset(cfg, a.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    json.dump(
        {
            k: {n: {"samples": s["samples"], "path": s["path"]} for n, s in v.items()} if k == "sites" else v
            for k, v in manifest.items()
            if k in ("sites", "test")
        },
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
