"""Bytes exchanged per round: full fine-tuning vs last-N layers vs LoRA vs head only (baseline: full).

Per round each site receives the global trainable parameters and sends back their difference
(float32), so bytes/round = 2 x sites x trainable bytes. The e2e tests check that the bytes a
client reports sending equal the bytes the server receives.
"""

from __future__ import annotations

import argparse

from esm2_common import add_app_paths, machine


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,8M,35M", help="comma-separated (real shapes, random weights)")
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--last-n", type=int, default=1)
    ap.add_argument("--lora-r", type=int, default=8)
    a = ap.parse_args()
    add_app_paths()
    from esm2_app import LOCATION_CLASSES
    from esm2_app.modeling import apply_mode, build_model, get_trainable, params_nbytes

    print(f"# bytes exchanged per round ({a.sites} sites, float32), machine: {machine()}")
    print(f"{'preset':>6} {'mode':>10} {'trainable':>12} {'bytes/round':>14} {'vs full':>8}")
    rows = []
    for preset in a.presets.split(","):
        full = None
        for mode in ("full", "lastN", "lora", "head"):
            m = build_model(preset, len(LOCATION_CLASSES), seed=0, allow_random=True)
            m = apply_mode(m, mode, a.last_n, {"r": a.lora_r})
            t = get_trainable(m)
            per_round = 2 * a.sites * params_nbytes(t)
            full = full or per_round
            label = (
                f"last{a.last_n}" if mode == "lastN" else (f"lora-r{a.lora_r}" if mode == "lora" else mode)
            )
            n = sum(v.size for v in t.values())
            print(f"{preset:>6} {label:>10} {n:>12,} {per_round:>14,} {per_round / full:>8.4f}")
            rows.append((preset, label, n, per_round, per_round / full))
            del m
    return rows


if __name__ == "__main__":
    main()
