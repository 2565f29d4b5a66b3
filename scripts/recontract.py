"""A trained run read through another input contract (docs/experiments.md, round 5).

    PNEUMOSCAN_DATA=... python scripts/recontract.py RUN --out NEW_RUN --smoothing SIGMA

Writes NEW_RUN with RUN's weights and `preprocessing.smoothing = SIGMA` (a Gaussian inside
the model, after the normalisation; every reader applies it), then fits the threshold (highest
with carved-val sensitivity >= the run's target), the temperature and the OOD gate again on
the run's own carved split, as training does. RUN is read, never written; NEW_RUN must not
exist. Copies config.yaml and split.csv, which the gate commands read.
"""

from __future__ import annotations

import argparse
import os
import sys

from pneumoscan.core.errors import CheckpointError
from pneumoscan.training.recontract import recontract


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoothing", type=float, required=True)
    ap.add_argument("--data", default=os.environ.get("PNEUMOSCAN_DATA"))
    args = ap.parse_args()
    if not args.data:
        sys.exit("no dataset: pass --data or set PNEUMOSCAN_DATA")
    try:
        ckpt = recontract(args.run, args.out, args.data, smoothing=args.smoothing)
    except (CheckpointError, FileExistsError) as e:
        sys.exit(f"recontract: {e}")
    print(f"{args.out}: smoothing {args.smoothing}, threshold {ckpt.threshold:.4f}, "
          f"temperature {ckpt.temperature:.3f}, val {ckpt.val_metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
