#!/usr/bin/env python
"""voting_det: interpretable primitive-voting localization of small anatomical
structures, as a detectron2 extension.

detectron2 itself is deliberately NOT listed in install_requires: it is not on
PyPI under its own name. `make demo` / `make test` (tools/install.sh) keep an
importable official detectron2 and otherwise install a registry repackaging.
"""
import re

from setuptools import find_packages, setup


def get_version():
    with open("voting_det/__init__.py") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("voting_det/__init__.py has no __version__")
    return match.group(1)


setup(
    name="voting_det",
    version=get_version(),
    author="voting_det developers",
    description=(
        "Interpretable multi-scale primitive voting for structure localization "
        "in medical images (nuchal translucency), built on detectron2"
    ),
    license="Apache-2.0",
    python_requires=">=3.10",
    # the method only: benchmarks/ (the runner, tables, speed and caliper tools
    # next to their results), tests/ and tools/ stay in the checkout
    packages=find_packages(include=("voting_det", "voting_det.*")),
    install_requires=[
        "torch>=1.13",
        "torchvision",
        "numpy<2",
        "scipy",
        "pillow",
        "opencv-python-headless<4.12",
        "openpyxl",
        "pycocotools",
        "fvcore",
        "iopath",
        "matplotlib",
        "tqdm",
        # DICOM input (voting_det/data/dicom.py); the plugins decode JPEG, JPEG-LS and JPEG 2000
        "pydicom>=3.0",
        "pylibjpeg",
        "pylibjpeg-libjpeg",
        "pylibjpeg-openjpeg",
        # the local viewer (voting_det/viewer, tools/serve.py)
        "fastapi",
        "uvicorn",
        "python-multipart",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "scikit-learn", "httpx", "selenium"],
        # TorchScript is torch's own; ONNX export and ONNX Runtime (tools/export_model.py)
        "export": ["onnx==1.23.2", "onnxruntime==1.32.0"],
    },
    package_data={"voting_det.viewer": ["static/*"]},
)
