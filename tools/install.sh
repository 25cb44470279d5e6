#!/usr/bin/env bash
# Sets up the project's virtual environment: torch, detectron2, the runtime and
# test dependencies, and voting_det itself in editable mode.
#
# Idempotent: a stamp file inside the venv records a hash of this script and of
# setup.py; when both are unchanged the whole step is skipped.
#
# Keeps what a user already has: an importable torch/torchvision (e.g. a CUDA
# build) and an importable official detectron2 are never replaced.
set -uo pipefail

VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.voting_det_install_stamp"

say()  { echo "[install] $*"; }
fail() { echo "[install] FAILED at step: $1" >&2; echo "[install] fix the cause above and rerun; nothing else was changed." >&2; exit 1; }

want_stamp="$(cat "$0" setup.py 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]] && "$VENV/bin/python" -c "import voting_det" 2>/dev/null; then
  say "environment $VENV is up to date (stamp $STAMP); skipping"
  exit 0
fi

# 1. virtual environment
if [[ ! -x "$VENV/bin/python" ]]; then
  say "step 1/6: creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV" || fail "create virtual environment ($PYTHON -m venv $VENV)"
else
  say "step 1/6: using existing virtual environment $VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

# 2. torch and torchvision (keep importable ones)
if "$PY" -c "import torch, torchvision" 2>/dev/null; then
  say "step 2/6: keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
  case "$(uname -m)" in
    x86_64)  TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
    aarch64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
    *) fail "install torch (no pinned build for $(uname -m); install torch and torchvision into $VENV yourself, then rerun)" ;;
  esac
  say "step 2/6: installing ${TORCH[*]} (large, from local disk where available)"
  "${PIP[@]}" "${TORCH[@]}" || fail "install ${TORCH[*]}"
fi

# 3. runtime and test dependencies (detectron2's own among them; pydicom and the
#    pylibjpeg plugins read DICOM, JPEG and JPEG 2000 compressed ones included:
#    with numpy<2 pip picks their numpy-1 wheels)
say "step 3/6: installing runtime and test dependencies"
"${PIP[@]}" "numpy<2" "omegaconf>=2.1,<2.4" "setuptools<81" "opencv-python-headless<4.12" \
  fvcore iopath pycocotools yacs termcolor tabulate cloudpickle tensorboard hydra-core \
  matplotlib pillow openpyxl scipy scikit-learn tqdm pytest pytest-xdist hypothesis \
  "pydicom>=3.0" pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg \
  fastapi uvicorn python-multipart httpx selenium "onnx==1.23.2" "onnxruntime==1.32.0" \
  || fail "install runtime and test dependencies"

# 3b. Debian's chromium and its driver for the viewer's browser test, best effort:
#     only as root with apt-get, never required (the test skips without them and says so)
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  say "step 3b: chromium and chromedriver found"
elif [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
  say "step 3b: installing Debian's chromium and chromium-driver (viewer browser test)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 \
    || say "step 3b: could not install chromium (the browser test will be skipped); continuing"
else
  say "step 3b: no chromium and not root with apt-get: the viewer's browser test will be skipped"
fi

# 4. detectron2 (keep an importable official one, else the registry repackaging)
if "$PY" -c "import detectron2" 2>/dev/null; then
  say "step 4/6: keeping installed detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
else
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  say "step 4/6: detectron2 not importable; installing the fallback sal-detectron2==0.7.2 into $SITE"
  TMP="$(mktemp -d)"
  "$PY" -m pip install --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.10 --target "$TMP" sal-detectron2==0.7.2 || fail "download sal-detectron2==0.7.2"
  # copy only detectron2's own package and metadata (never other top-level folders)
  for d in "$TMP"/detectron2 "$TMP"/*detectron2*.dist-info; do
    [[ -e "$d" ]] || continue
    rm -rf "$SITE/$(basename "$d")"
    cp -r "$d" "$SITE/" || fail "copy $(basename "$d") into $SITE"
  done
  rm -rf "$TMP"
  "$PY" -c "import detectron2, detectron2.modeling, detectron2.engine" || fail "import the fallback detectron2"
fi

# 5. this package, editable
say "step 5/6: installing voting_det (editable)"
"${PIP[@]}" --no-build-isolation --no-deps -e . || fail "install voting_det in editable mode"

# 6. check
say "step 6/6: checking imports"
"$PY" -c "import torch, detectron2, voting_det; print('[install] torch', torch.__version__, '| detectron2', detectron2.__version__, '| voting_det', voting_det.__version__)" \
  || fail "import torch, detectron2 and voting_det"
echo "$want_stamp" > "$STAMP"
say "done"
