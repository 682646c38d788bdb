import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# Files the package reads at run time, shipped inside it as onmt_structdrop/_data (onmt_structdrop/resources.py)
SHIPPED = ("cuda", "patches", "recipes/sample_multi30k_deen")


class BuildPyWithData(build_py):
    """build_py that also copies SHIPPED into the built package, so that a non-editable install has them."""

    def run(self):
        super().run()
        for name in SHIPPED:
            self.copy_tree(name, os.path.join(self.build_lib, "onmt_structdrop", "_data", name))


setup(
    name="onmt-structdrop",
    version="0.1.0",
    description="Structured dropout for LSTMs (shared across the batch, redrawn each step) that skips the "
                "dropped work, with OpenNMT-py encoders and decoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["onmt_structdrop", "onmt_structdrop.*"]),
    cmdclass={"build_py": BuildPyWithData},
    python_requires=">=3.9",
    # OpenNMT-py 3.5.1 pins torch<2.3; it is installed separately without its dependencies (scripts/setup_env.sh).
    install_requires=["torch>=2.4", "numpy", "tqdm", "pyyaml"],
    extras_require={"cuda": ["cupy-cuda12x"], "plot": ["matplotlib"], "test": ["pytest>=7"],
                    "tasks": ["pytorch-crf", "seqeval"]},
    entry_points={
        "console_scripts": ["onmt-structdrop-bench=onmt_structdrop.tools.bench:cli",
                            "onmt-structdrop-patch=onmt_structdrop.tools.patch_onmt:main",
                            "onmt-structdrop-lm=onmt_structdrop.tasks.lm:cli",
                            "onmt-structdrop-ner=onmt_structdrop.tasks.ner:cli"],
        # found by OpenNMT-py once patched (patches/opennmt-3.5.1/01-plugins.patch)
        "onmt.plugins": ["structdrop=onmt_structdrop.opennmt:register"],
    },
)
