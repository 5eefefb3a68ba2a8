"""Build fused_rnn._C: the C++ CPU kernels always, the CUDA kernels when a toolkit is found.

Switches (environment variables):
  FUSED_RNN_CUDA=1 / 0     force / skip the CUDA sources (default: build them when torch has
                           CUDA and a toolkit is found in CUDA_HOME, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST     GPU targets; default "8.0;9.0a" when no GPU is visible
  MAX_JOBS                 parallel compile jobs (ninja)
  FUSED_RNN_DEBUG=1        -O0 -g, no -DNDEBUG
"""

import glob
import os
import runpy

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")

# torch.utils.cpp_extension reads CUDA_HOME when it is imported: settle it first.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def build_with_cuda() -> bool:
    switch = os.environ.get("FUSED_RNN_CUDA", "").strip()
    if switch == "0":
        return False
    found = torch.version.cuda is not None and CUDA_HOME is not None
    if switch == "1":
        if not found:
            raise RuntimeError(
                "FUSED_RNN_CUDA=1 but no CUDA build of torch or no CUDA toolkit was found "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})"
            )
        return True
    return found


def cuda_arch_list() -> str:
    """The GPU targets of the CUDA sources, as torch's build reads them from
    TORCH_CUDA_ARCH_LIST (set here to the default when no GPU is visible; unset, torch builds
    for the visible GPUs)."""
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0a"
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    visible = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in visible) + " (the visible GPUs)"


def write_build_info(with_cuda: bool) -> str:
    """Generate build/generated/build_info.h with the source hash, whether the CUDA kernels are
    built and for which targets; returns its directory."""
    source_hash = runpy.run_path(os.path.join(ROOT, "fused_rnn", "_source_hash.py"))["source_hash"]
    out_dir = os.path.join(ROOT, "build", "generated")
    os.makedirs(out_dir, exist_ok=True)
    text = (
        "#pragma once\n"
        f'#define FUSED_RNN_SOURCE_HASH "{source_hash(CSRC)}"\n'
        f"#define FUSED_RNN_WITH_CUDA {int(with_cuda)}\n"
        f'#define FUSED_RNN_CUDA_ARCH_LIST "{cuda_arch_list() if with_cuda else ""}"\n'
    )
    path = os.path.join(out_dir, "build_info.h")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return out_dir


def extensions():
    with_cuda = build_with_cuda()
    debug = os.environ.get("FUSED_RNN_DEBUG", "0") == "1"
    generated = write_build_info(with_cuda)

    top_level = ("ops.cpp", "autograd.cpp", "cell_step.cpp", "layernorm_ops.cpp",
                 "layernorm_autograd.cpp")
    sources = [os.path.join("csrc", n) for n in top_level]
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    opt = ["-O0", "-g"] if debug else ["-O3", "-DNDEBUG"]
    # -fno-trapping-math lets the row loops of the CPU kernels turn their clamps into blends and
    # vectorise (torch builds with the same two flags); -ffp-contract=fast lets them use FMA.
    cxx = opt + [
        "-fno-trapping-math",
        "-fno-math-errno",
        "-ffp-contract=fast",
        "-Wall",
        "-Wextra",
        "-Wno-unused-parameter",
        "-DPy_LIMITED_API=0x030A0000",
    ]
    # at::parallel_for is a header template: without OpenMP enabled in this build it runs every
    # chunk on the calling thread. torch's OpenMP runtime (libgomp) is already loaded and
    # shared.
    link = []
    if torch.__config__.parallel_info().find("ATen parallel backend: OpenMP") >= 0:
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    extra = {"cxx": cxx}
    ext = CppExtension
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        extra["nvcc"] = opt + [
            "-lineinfo",
            "--expt-relaxed-constexpr",
            "-Xptxas=-warn-spills",
            "--threads=2",
        ]
        ext = CUDAExtension
    return [
        ext(
            "fused_rnn._C",
            sources,
            include_dirs=[CSRC, generated],
            extra_compile_args=extra,
            extra_link_args=link,
            py_limited_api=True,
        )
    ]


setup(
    packages=find_packages(include=["fused_rnn", "fused_rnn.*"]) + ["fused_rnn.triton_kernels"],
    package_dir={"fused_rnn.triton_kernels": "triton_kernels"},
    # backend="auto"'s dispatch tables, recorded by the benchmark (fused_rnn/dispatch.py)
    package_data={"fused_rnn": ["dispatch_tables/*.json"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
