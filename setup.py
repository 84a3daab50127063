"""Build fastdarts and its extension ``fastdarts._C``.

The C++ CPU sources in ``csrc/`` are always built (CppExtension); the CUDA sources in
``csrc/cuda/`` are added when the installed torch has CUDA and a toolkit is found.
Environment switches (all optional):

* ``USE_CPP=0``                      skip the extension entirely (pure Python install)
* ``FASTDARTS_SKIP_CUDA_BUILD=1``    build the CPU extension only
* ``FASTDARTS_CUDA_ARCHS="80;90"``    CUDA architectures (default: 80;90): SASS for each, plus
                                     PTX of the highest one so that newer GPUs JIT-load the module
* ``DEBUG=1``                        compile with ``-O0 -g``

Install for development with ``pip install --no-build-isolation -e .`` so the extension
is compiled against the torch already in the environment.
"""

import glob
import os
import re

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default) == "1"


def cuda_gencode_flags(archs: str) -> list:
    """nvcc -gencode flags for ``archs`` ("80;90", "90a", ...): SASS for every architecture, and
    PTX of the highest one as well (``code=[sm_90,compute_90]``), which the driver JIT-compiles on
    GPUs newer than any listed architecture."""
    names = [a.strip() for a in archs.replace(",", ";").split(";") if a.strip()]
    bad = [a for a in names if not re.fullmatch(r"\d{2,3}a?", a)]
    if not names or bad:
        raise ValueError(f"FASTDARTS_CUDA_ARCHS={archs!r}: expected compute capabilities like '80;90' or '90a'")
    top = max(names, key=lambda a: (int(a.rstrip("a")), a))
    flags = []
    for a in names:
        code = f"[sm_{a},compute_{a}]" if a == top else f"sm_{a}"
        flags.append(f"-gencode=arch=compute_{a},code={code}")
    return flags


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
        gencode = cuda_gencode_flags(os.environ.get("FASTDARTS_CUDA_ARCHS", "80;90"))
        # -lineinfo: source lines in profiles (Nsight Compute) and sanitizer reports, no speed cost.
        extra["nvcc"] = (["-O0", "-g"] if debug else ["-O3"]) + ["-lineinfo"] + gencode + ["-DFASTDARTS_WITH_CUDA"]
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
