"""``python -m pmg_core.metrics REF.png DIST.png [--net alex|vgg]``: LPIPS and SSIM of one pair.

Prints one JSON object (``lpips``, ``lpips_net``, ``ssim``, the two paths and
sizes) on stdout. A missing or unreadable image gives a one-line error on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..cli_common import write_line
from ..errors import PMGError


def main(argv: list[str] | None = None) -> int:
    """python -m pmg_core.metrics REF DIST: print LPIPS and SSIM as one JSON object."""
    parser = argparse.ArgumentParser(
        prog="python -m pmg_core.metrics",
        description="LPIPS v0.1 and SSIM between a reference and a distorted image (full resolution; "
        "the second image is resized to the first's size when they differ).",
    )
    parser.add_argument("reference", help="reference image file")
    parser.add_argument("distorted", help="image to compare with the reference")
    parser.add_argument("--net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone (default: alex)")
    parser.add_argument("--device", default="cpu", help="torch device for LPIPS (default: cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from .images import load_image
    from .lpips import LPIPS
    from .ssim import ssim

    try:
        reference = load_image(args.reference)
        distorted = load_image(args.distorted)
        lpips_value = LPIPS(args.net, device=args.device).distance(reference, distorted)
        ssim_value = ssim(reference, distorted)
    except PMGError as exc:
        write_line("error: " + " ".join(str(exc).split()), error=True)  # one line, whatever the cause
        return 2
    result = {
        "lpips": round(float(lpips_value[0]), 6),
        "lpips_net": args.net,
        "ssim": round(float(ssim_value[0]), 6),
        "reference": args.reference,
        "distorted": args.distorted,
        "size": list(reference.shape[-2:]),
        "resized_distorted": list(reference.shape[-2:]) != list(distorted.shape[-2:]),
    }
    write_line(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
