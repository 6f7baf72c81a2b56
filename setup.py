"""Installs anchor_reg: stage-wise fixed-anchor training for noise-robust speaker verification."""
from setuptools import find_packages, setup

setup(
    name="anchor_reg",
    version="0.1.0",
    description=(
        "SpeechBrain recipe extension: stage-wise learning with fixed anchors "
        "for noise-robust speaker verification (arXiv 2510.18530), and adaptation "
        "of pretrained speaker models to one's own noisy data"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # the recipe's YAMLs travel with the package (anchor_reg.hparams), so the installed
    # console scripts (the benchmark loads stage1/stage2/joint.yaml) work outside a checkout
    packages=find_packages(include=["anchor_reg", "anchor_reg.*"]) + ["anchor_reg.hparams"],
    package_dir={"anchor_reg.hparams": "hparams"},
    package_data={"anchor_reg.hparams": ["*.yaml"]},
    install_requires=[
        "speechbrain==1.1.2",
        "torch==2.14.1",
        "torchaudio==2.11.0",
        "hyperpyyaml>=1.2.2",
        "numpy>=1.24",
        "scipy>=1.10",
        "sentencepiece>=0.1.99",
        "soundfile>=0.12",
        "matplotlib>=3.7",
        "huggingface_hub>=0.20",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={
        "console_scripts": [
            "anchor-reg-export=anchor_reg.export:main",
            "anchor-reg-evaluate=anchor_reg.evaluate:main",
            "anchor-reg-compare=anchor_reg.compare:main",
            "anchor-reg-benchmark=anchor_reg.benchmark.cli:main",
        ]
    },
)
