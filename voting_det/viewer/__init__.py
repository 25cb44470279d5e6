"""The local viewer (``tools/serve.py``, docs/viewer.md): a page on localhost
where one drops PNG, JPEG or DICOM files and sees, per image, the NT box and
score, the calipers and thickness (px, mm, the cut-off flag), the explanation
in a clinician's form with the research panel one click away; calipers can be
dragged to correct them, and the table of all images downloads as CSV.

- :mod:`.model`: the one model (an Explainer for voting_det models);
- :mod:`.analysis`: one uploaded file through it (or a clear error);
- :mod:`.table`: caliper corrections and the CSV;
- :mod:`.store`: the session's images, in memory;
- :mod:`.app`: the FastAPI app (page in ``static/``, JSON API).
"""
from .app import LOOPBACK_HOSTS, create_app
from .model import ViewerModel
from .table import CSV_FIELDS

__all__ = ["CSV_FIELDS", "LOOPBACK_HOSTS", "ViewerModel", "create_app"]
