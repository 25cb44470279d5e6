#!/usr/bin/env python
"""The local viewer: a page where one drops PNG, JPEG or DICOM files and sees,
per image, the NT box and score, the calipers and thickness (px and mm, the
3.5 mm flag) and how the model found it; calipers can be dragged to correct
them, and the table of all images downloads as CSV (docs/viewer.md).

    .venv/bin/python tools/serve.py --config-file output/demo/stage2_voting/config.yaml \\
        MODEL.WEIGHTS output/demo/stage2_voting/model_final.pth

then open the address it prints (http://127.0.0.1:8765/). It listens on this
computer only (127.0.0.1); ``--host`` another address makes it reachable from
the network, without any login (a warning says so). It loads nothing from the
network. Images are held in memory while it runs; nothing is written. Stop it
with Ctrl+C (download the CSV first).

A voting_det model (LS, LCF, Proposed) gives the thickness and the
explanation; another detectron2 model (e.g. Faster R-CNN FPN) its box and
score only. ``--pixel-spacing`` is every image's spacing, a DICOM file's own
replaced (as in tools/predict.py); without it a DICOM file's own spacing is
used where it has one. The page can also set one for the files dropped, which
wins over both.

Exit status: 2 for a user error (one line naming the file or key, found before
the model loads); 0 after Ctrl+C.
"""
import os
import runpy

# voting_det.cli.quiet_known_warnings, run before detectron2 is imported (import voting_det imports it)
runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "voting_det", "cli.py"))["quiet_known_warnings"]()

import argparse  # noqa: E402
import ipaddress  # noqa: E402
import logging  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import voting_det  # noqa: F401,E402  (registers the data sets and the model)
from voting_det import cli  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def build_parser():
    p = argparse.ArgumentParser(prog="tools/serve.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config (YAML)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this computer only). Another one, e.g. "
                        "0.0.0.0, makes the viewer and its images reachable from the network without a login")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                   help="mm per pixel of every image, a DICOM file's own spacing replaced (as tools/predict.py): "
                        "the thickness is also given in mm")
    p.add_argument("--top", type=int, default=None,
                   help="primitives per level kept for the research panel (MODEL.EXPLAIN.TOP_PRIMITIVES, default 5; "
                        "the page names the first 3)")
    p.add_argument("--max-upload-mb", type=float, default=300.0, help="largest file accepted, MB (default 300)")
    p.add_argument("--max-images", type=int, default=200, help="images held at once (default 200)")
    return cli.add_overrides(p, progress=False)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this computer only (127.x, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on (in use, or not allowed) before the model loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise cli.UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror}); choose another "
                                "--port (a viewer may already run there: open it) or --host") from None


def parse_args(argv=None):
    p = build_parser()
    args = cli.parse_args(p, argv)
    if not 0 < args.port < 65536:
        p.error(f"--port must be 1 to 65535, got {args.port}")
    if args.pixel_spacing is not None and not args.pixel_spacing > 0:
        p.error(f"--pixel-spacing must be > 0 (mm per pixel, e.g. 0.1), got {args.pixel_spacing}")
    if args.top is not None and args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    if not args.max_upload_mb > 0:
        p.error(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.max_images < 1:
        p.error(f"--max-images must be >= 1, got {args.max_images}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # every user error before the model is built
    cfg = cli.load_config(args.config_file, list(args.opts))
    cli.check_weights(cfg)
    check_port(args.host, args.port)
    loopback = is_loopback(args.host)
    if not loopback:
        print(f"warning: --host {args.host}: the viewer is reachable from other computers, with no login and no "
              "encryption; anyone who can reach this port sees and changes the images. Use it only on a network "
              "you trust, and never with patient data outside one", file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s %(levelname)s] %(message)s")

    import uvicorn

    from voting_det.viewer import LOOPBACK_HOSTS, ViewerModel, create_app

    model = ViewerModel(cfg, top_primitives=args.top, spacing_override=args.pixel_spacing)
    app = create_app(model, allowed_hosts=LOOPBACK_HOSTS if loopback else None,
                     max_upload_mb=args.max_upload_mb, max_items=args.max_images)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    shown = f"[{shown}]" if ":" in shown else shown
    print(f"voting_det viewer: open http://{shown}:{args.port}/ in a browser (Ctrl+C stops it; the images are "
          "lost then: download the CSV first)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    cli.run_tool(main)
