# Triton for the compose `cpu` profile (and the k8s dev overlay): the same pinned official
# image as the GPU profile, plus TensorFlow for the Python backend, which runs the
# `autolabel models build --target cpu` repository. No GPU is reserved or needed.
#
#   docker build -t autolabel-triton-cpu:25.02 -f deploy/compose/triton-cpu.Dockerfile deploy/compose
#
# The TensorFlow range is the project's `ml` extra (pyproject.toml); numpy stays below 2,
# which Triton's Python backend needs (pyproject.toml explains).
FROM nvcr.io/nvidia/tritonserver:25.02-py3

# PIP_BREAK_SYSTEM_PACKAGES: the image's system Python is where the Python backend stub
# looks for packages; older pips ignore the variable.
ENV PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 TF_CPP_MIN_LOG_LEVEL=2
RUN python3 -m pip install "tensorflow-cpu>=2.17,<2.22" "numpy>=1.26,<2"
