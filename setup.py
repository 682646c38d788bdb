import glob
import os
import sys

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


def native_engine():
    """The C++ engine (onmt_structdrop/csrc) as an extension module built through torch's cpp_extension, and the
    build command that builds it. Without torch at build time (pip's build isolation) or a compiler, the package
    installs without it and the torch backend serves (onmt_structdrop/ops/native_backend.py says why at run
    time). ONMT_STRUCTDROP_NATIVE=0 skips it (a GPU machine that only needs the CUDA engine)."""
    if os.environ.get("ONMT_STRUCTDROP_NATIVE", "1") == "0":
        print("onmt-structdrop: ONMT_STRUCTDROP_NATIVE=0, so the native CPU engine is not built")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("onmt-structdrop: torch is not importable at build time, so the native CPU engine is not built "
              "(install with --no-build-isolation to build it)")
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        def run(self):
            try:
                super().run()
            except Exception as err:  # a missing or failing compiler must not stop the install
                for ext in self.extensions:  # nor may an earlier build of older sources stay in use (in the
                    # build folder, or in the source tree where an editable install put it)
                    in_tree = os.path.join(os.path.dirname(os.path.abspath(__file__)), self.get_ext_filename(ext.name))
                    for path in (self.get_ext_fullpath(ext.name), in_tree):
                        if os.path.exists(path):
                            os.remove(path)
                print(f"onmt-structdrop: the native CPU engine was not built ({err}); the torch backend serves",
                      file=sys.stderr)

    sources = sorted(glob.glob("onmt_structdrop/csrc/*.cpp"))
    # -ffp-contract=fast: ISO C++ mode would otherwise keep a * b + c from becoming one FMA in the kernels;
    # -fopenmp: at::parallel_for is OpenMP in torch's CPU builds (the libgomp torch loaded serves it at run time)
    native = CppExtension("onmt_structdrop._native", sources,
                          extra_compile_args=["-O3", "-ffp-contract=fast", "-fopenmp"], extra_link_args=["-fopenmp"],
                          depends=glob.glob("onmt_structdrop/csrc/*.h"))
    return [native], {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


EXTENSIONS, BUILD_EXT = native_engine()


def cupy_for_torch():
    """The CuPy wheel for the CUDA of the torch seen at build time (cupy-cuda12x when none is seen: pip's build
    isolation hides torch; the extras cuda12 and cuda13 name one outright)."""
    try:
        import torch
        major = (torch.version.cuda or "12").split(".")[0]
    except ImportError:
        major = "12"
    return f"cupy-cuda{major}x"

setup(
    name="onmt-structdrop",
    version="0.1.0",
    description="Structured dropout for LSTMs (shared across the batch, redrawn each step) that skips the "
                "dropped work, with OpenNMT-py encoders and decoders",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["onmt_structdrop", "onmt_structdrop.*"]),
    ext_modules=EXTENSIONS,
    cmdclass={"build_py": BuildPyWithData, **BUILD_EXT},
    python_requires=">=3.9",
    # OpenNMT-py 3.5.1 pins torch<2.3; it is installed separately without its dependencies (scripts/setup_env.sh).
    install_requires=["torch>=2.6", "numpy", "tqdm", "pyyaml"],
    extras_require={"cuda": [cupy_for_torch()], "cuda12": ["cupy-cuda12x"], "cuda13": ["cupy-cuda13x"],
                    "plot": ["matplotlib"], "test": ["pytest>=7"], "tasks": ["pytorch-crf", "seqeval"]},
    entry_points={
        "console_scripts": ["onmt-structdrop-bench=onmt_structdrop.tools.bench:cli",
                            "onmt-structdrop-patch=onmt_structdrop.tools.patch_onmt:main",
                            "onmt-structdrop-lm=onmt_structdrop.tasks.lm:cli",
                            "onmt-structdrop-ner=onmt_structdrop.tasks.ner:cli"],
        # found by OpenNMT-py once patched (patches/opennmt-3.5.1/01-plugins.patch)
        "onmt.plugins": ["structdrop=onmt_structdrop.opennmt:register"],
    },
)
