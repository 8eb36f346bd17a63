"""Packaging for vissiam_kernels (kernels) and vi_simsiam (model and scripts).

The C++ kernels are compiled on first use (ninja, cached; see
vissiam_kernels/_extension.py), so installing needs no compiler step and the
library always matches the installed torch. A non-editable install ships the
sources from csrc/ inside the package as vissiam_kernels/_csrc/.
"""

import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithSources(build_py):
    """Copy csrc/ into the built package so `pip install .` can compile it later."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "vissiam_kernels" / "_csrc"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(ROOT / "csrc", target)


setup(
    name="vissiam-kernels",
    version="0.1.0",
    description="Fused, exact likelihoods on the unit hypersphere (power spherical, vMF) and VI-SimSiam",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vissiam_kernels*", "vi_simsiam*"]),
    include_package_data=True,
    package_data={"vi_simsiam": ["class_lists/*.txt"]},  # ImageNet-100, Imagenette, Imagewoof class lists
    install_requires=[
        "torch>=2.6",
        "torchvision",
        "numpy",
        "ninja",
        "scikit-learn",
        "scipy",
        "tqdm",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "mpmath", "power-spherical"],  # the peer package log_prob is checked against
        "bench": ["pytest", "pytest-benchmark", "power-spherical"],
    },
    entry_points={"console_scripts": ["vi-simsiam=vi_simsiam.cli:main"]},
    cmdclass={"build_py": BuildPyWithSources},
)
