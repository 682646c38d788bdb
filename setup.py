from setuptools import find_packages, setup

setup(
    name="onmt-structdrop",
    version="0.1.0",
    description="Structured dropout for LSTMs (shared across the batch, redrawn each step) that skips the "
                "dropped work, with OpenNMT-py encoders and decoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["onmt_structdrop", "onmt_structdrop.*"]),
    python_requires=">=3.9",
    # OpenNMT-py 3.5.1 pins torch<2.3; it is installed separately without its dependencies (scripts/setup_env.sh).
    install_requires=["torch>=2.4", "numpy", "tqdm", "pyyaml"],
    extras_require={"cuda": ["cupy-cuda12x"], "plot": ["matplotlib"], "test": ["pytest>=7"],
                    "tasks": ["pytorch-crf", "seqeval"]},
    entry_points={
        "console_scripts": ["onmt-structdrop-bench=onmt_structdrop.bench:cli",
                            "onmt-structdrop-patch=onmt_structdrop.opennmt.patching:main",
                            "onmt-structdrop-lm=onmt_structdrop.tasks.lm:cli",
                            "onmt-structdrop-ner=onmt_structdrop.tasks.ner:cli"],
        # found by OpenNMT-py once patched (patches/opennmt-3.5.1/01-plugins.patch)
        "onmt.plugins": ["structdrop=onmt_structdrop.opennmt:register"],
    },
)
