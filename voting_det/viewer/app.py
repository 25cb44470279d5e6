"""The viewer's HTTP side: a small FastAPI app serving the page (static/) and
a JSON API (docs/viewer.md lists the endpoints).

Safety: the app answers only requests whose Host is one of ``allowed_hosts``
(the loopback names by default, against DNS rebinding), refuses state-changing
requests from another origin (a web page elsewhere cannot post to it), and
sends a Content-Security-Policy allowing nothing but its own files (the page
loads nothing from the network).
"""
import io
import logging
import math
import os
import re
import shutil
import tempfile
from typing import Dict, Optional, Sequence
from urllib.parse import urlsplit

import cv2
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .analysis import Item, analyse_file, clean_name, failed_item
from .model import ViewerModel
from .store import ItemStore, StoreFullError
from .table import correct, csv_text, measurement, table_row

__all__ = ["LOOPBACK_HOSTS", "create_app", "item_json"]

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
CSV_NAME = "nt_measurements.csv"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _host_name(host: str) -> str:
    """The name of a Host header, without its port (IPv6 without brackets)."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _measurement_of_row(row: Dict) -> Dict:
    return measurement(Item(id="", file="", row=row))


def item_json(item: Item, model: ViewerModel) -> Dict:
    """What the page gets of an item (nothing of the patient: file name, pixels'
    size, frame, spacing, detection, measurement, explanation, table row)."""
    data = {"id": item.id, "file": item.file, "ok": item.error is None, "error": item.error, "row": table_row(item)}
    if item.error is not None:
        return data
    row = item.row
    detected = row["rank"] != 0
    data.update(item.info)
    data.update({
        "image_size": list(item.image.shape[:2]),
        "image_url": f"/api/images/{item.id}/image.png",
        "panel_url": f"/api/images/{item.id}/panel.png" if item.trace is not None and detected else None,
        "detection": {"score": row["score"], "class": row["class"], "box": [row[k] for k in ("x0", "y0", "x1", "y1")]}
        if detected else None,
        "measurement": measurement(item),
        "model_measurement": _measurement_of_row(row),
        "explanation": item.explanation,
        "explains": model.voting,
    })
    return data


def _point(value) -> Optional[list]:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return [x, y] if math.isfinite(x) and math.isfinite(y) else None


def _suffix(name: str) -> str:
    """The file's extension if it is a plain one (the reader looks at it), else none."""
    ext = os.path.splitext(name)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,8}", ext) else ""


def create_app(model: ViewerModel, *, allowed_hosts: Optional[Sequence[str]] = LOOPBACK_HOSTS,
               max_upload_mb: float = 300.0, max_items: int = 200) -> FastAPI:
    """The viewer app of a loaded model. ``allowed_hosts``: the host names
    it answers to (None: any, for a server bound to a network interface)."""
    app = FastAPI(title="voting_det viewer", docs_url=None, redoc_url=None, openapi_url=None)
    store = ItemStore(max_items)
    app.state.store, app.state.model = store, model
    max_bytes = int(max_upload_mb * 1024 * 1024)
    hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    @app.middleware("http")
    async def guard(request: Request, call_next):
        host = request.headers.get("host", "")
        if hosts is not None and _host_name(host).lower() not in hosts:
            return _error(400, f"host {host!r} refused: open the viewer at http://127.0.0.1:<port>/")
        origin = request.headers.get("origin")
        if request.method in _UNSAFE_METHODS and origin and urlsplit(origin).netloc.lower() != host.lower():
            return _error(403, f"request from {origin} refused: only the viewer's own page may change its images")
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in exc.errors())
        return _error(422, f"{request.url.path}: missing or malformed {fields}; the page sends them itself "
                           "(reload it)")

    class _NotFound(Exception):
        def __init__(self, item_id):
            self.item_id = item_id

    def _get(item_id: str) -> Item:
        item = store.get(item_id)
        if item is None:
            raise _NotFound(item_id)
        return item

    @app.exception_handler(_NotFound)
    async def not_found(request: Request, exc: _NotFound):
        return _error(404, f"image {exc.item_id}: not in this viewer (removed, or the viewer was restarted); "
                           "drop the file again")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(os.path.join(STATIC, "index.html"))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/info")
    def info():
        return {"model": model.describe(), "max_upload_mb": max_upload_mb, "max_images": max_items,
                "images": len(store), "csv_name": CSV_NAME}

    @app.get("/api/images")
    def list_images():
        return {"images": [item_json(item, model) for item in store.items()]}

    @app.post("/api/images")
    def upload(file: UploadFile = File(...), pixel_spacing: Optional[str] = Form(None),
               frame: Optional[str] = Form(None)):
        name = clean_name(file.filename)
        try:
            store.check_room()
        except StoreFullError as e:
            return _error(409, f"{name}: not added: {e}", file=name)
        spacing = None
        if pixel_spacing not in (None, ""):
            try:
                spacing = float(pixel_spacing)
            except ValueError:
                spacing = -1.0
            if not (math.isfinite(spacing) and spacing > 0):
                return _error(422, f"pixel spacing {pixel_spacing!r}: give mm per pixel, a number > 0 "
                                   "(e.g. 0.1), or leave it empty", file=name)
        chosen = None
        if frame not in (None, ""):
            if not re.fullmatch(r"\d{1,6}", frame.strip()):
                return _error(422, f"frame {frame!r}: give a frame number, 0 for the first", file=name)
            chosen = int(frame)
        with tempfile.TemporaryDirectory(prefix="voting_det_viewer_") as folder:
            path = os.path.join(folder, "upload" + _suffix(name))
            with open(path, "wb") as out:
                shutil.copyfileobj(_limited(file.file, max_bytes), out)
                copied = out.tell()
            if copied > max_bytes:
                return _error(413, f"{name}: larger than {max_upload_mb:g} MB (tools/serve.py --max-upload-mb); "
                                   "export a single frame or a smaller file", file=name)
            try:
                item = analyse_file(model, path, name, page_spacing=spacing, frame=chosen)
            except Exception as e:  # a bug: reported for this file, the others unaffected
                logger.exception("%s: failed", name)
                item = failed_item(name, f"the viewer failed on this file ({type(e).__name__}); see the server's "
                                         "log and report it")
        try:
            store.add(item)
        except StoreFullError as e:
            return _error(409, f"{name}: not added: {e}", file=name)
        return JSONResponse(item_json(item, model), status_code=200 if item.error is None else 422)

    @app.get("/api/images/{item_id}")
    def get_image(item_id: str):
        return item_json(_get(item_id), model)

    @app.delete("/api/images/{item_id}")
    def remove(item_id: str):
        _get(item_id)
        store.remove(item_id)
        return {"removed": item_id}

    @app.delete("/api/images")
    def remove_all():
        store.clear()
        return {"removed": "all"}

    @app.get("/api/images/{item_id}/image.png")
    def image_png(item_id: str):
        item = _get(item_id)
        if item.image is None:
            return _error(404, f"{item.file}: no image (the file could not be read)")
        ok, data = cv2.imencode(".png", item.image)  # the pixels only: no metadata of the file
        # an item's image never changes: cached by the page (re-drawn views do not fetch it again)
        return Response(data.tobytes(), media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/images/{item_id}/panel.png")
    def panel_png(item_id: str):
        item = _get(item_id)
        if item.trace is None or not item.trace["detections"]:
            why = "no detection" if model.voting else "this model does not vote, so there is no explanation"
            return _error(404, f"{item.file}: no research panel ({why})")
        if item.panel_png is None:
            from ..interpretation import render_panel
            from ..interpretation.panel import DPI

            figure = render_panel(item.image, item.trace)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=DPI)
            item.panel_png = buffer.getvalue()
        return Response(item.panel_png, media_type="image/png")

    @app.put("/api/images/{item_id}/calipers")
    async def set_calipers(item_id: str, request: Request):
        item = _get(item_id)
        if item.image is None:
            return _error(409, f"{item.file}: no image to measure (the file could not be read)")
        try:
            body = await request.json()
        except ValueError:
            body = None
        upper, lower = (_point(body.get(k)) if isinstance(body, dict) else None for k in ("upper", "lower"))
        if upper is None or lower is None:
            return _error(422, f"{item.file}: give the calipers as {{\"upper\": [x, y], \"lower\": [x, y]}} "
                               "(image pixels)")
        h, w = item.image.shape[:2]
        if not all(0 <= p[0] <= w and 0 <= p[1] <= h for p in (upper, lower)):
            return _error(422, f"{item.file}: calipers outside the image (x 0 to {w}, y 0 to {h})")
        item.correction = correct(upper, lower, item.spacing_xy, model.cutoff_mm)
        return item_json(item, model)

    @app.delete("/api/images/{item_id}/calipers")
    def reset_calipers(item_id: str):
        item = _get(item_id)
        item.correction = None
        return item_json(item, model)

    @app.get("/api/table.csv")
    def table():
        return Response(csv_text(store.items()), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{CSV_NAME}"'})

    return app


class _limited:
    """A file object that stops after ``limit + 1`` bytes (the upload is then refused)."""

    def __init__(self, source, limit: int):
        self.source, self.left = source, limit + 1

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.source.read(size)
        self.left -= len(data)
        return data
