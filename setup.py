"""Build fastdarts and its extension ``fastdarts._C``.

The C++ CPU sources in ``csrc/`` are always built (CppExtension); the CUDA sources in
``csrc/cuda/`` are added when the installed torch has CUDA and a toolkit is found.
Environment switches (all optional):

* ``USE_CPP=0``                      skip the extension entirely (pure Python install)
* ``FASTDARTS_SKIP_CUDA_BUILD=1``    build the CPU extension only
* ``FASTDARTS_CUDA_ARCHS="90;80"``    CUDA architectures (default: 80;90)
* ``DEBUG=1``                        compile with ``-O0 -g``

Install for development with ``pip install --no-build-isolation -e .`` so the extension
is compiled against the torch already in the environment.
"""

import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default) == "1"


def get_extensions():
    if os.environ.get("USE_CPP", "1") == "0":
        return []
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    debug = _flag("DEBUG")
    cxx_flags = ["-O0", "-g"] if debug else ["-O3", "-fopenmp"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    use_cuda = bool(torch.version.cuda) and CUDA_HOME is not None and not _flag("FASTDARTS_SKIP_CUDA_BUILD")
    extra = {"cxx": cxx_flags}
    if use_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        archs = os.environ.get("FASTDARTS_CUDA_ARCHS", "80;90").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
        extra["nvcc"] = (["-O0", "-g"] if debug else ["-O3"]) + gencode + ["-DFASTDARTS_WITH_CUDA"]
        extra["cxx"] = extra["cxx"] + ["-DFASTDARTS_WITH_CUDA"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    return [
        ext_cls(
            "fastdarts._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args=extra,
            extra_link_args=[] if debug else ["-fopenmp"],
            py_limited_api=False,
        )
    ]


def get_cmdclass():
    if os.environ.get("USE_CPP", "1") == "0":
        return {}
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(use_ninja=True)}


setup(
    packages=find_packages(include=["fastdarts", "fastdarts.*"]) + ["fastdarts.kernels"],
    package_dir={"fastdarts.kernels": "kernels"},
    package_data={"fastdarts": ["configs/*.yaml"]},
    ext_modules=get_extensions(),
    cmdclass=get_cmdclass(),
)
