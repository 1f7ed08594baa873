# syntax=docker/dockerfile:1
# One image for every Tessera job (ENTRYPOINT: the `tessera` CLI), plus a Dataflow worker
# variant of the same image for preprocessing on Dataflow:
#   docker build --target tessera         -t REGISTRY/tessera:TAG .
#   docker build --target dataflow-worker -t REGISTRY/tessera-dataflow:TAG .
# TF_VERSION is the TensorFlow the project is tested with (tests/test_k8s_image.py checks
# it against pyproject.toml); the base image already contains it with CUDA and cuDNN.
ARG TF_VERSION=2.21.0
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11

# ---- builder: turn the source tree into a wheel (build tools stay in this stage) ----
FROM python:${PYTHON_VERSION}-slim AS builder
WORKDIR /src
RUN python -m pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md constraints.txt ./
COPY tessera ./tessera
COPY schemas ./schemas
COPY pipelines ./pipelines
COPY trainer ./trainer
RUN python -m build --wheel --outdir /wheels .

# ---- tessera: the runtime image ----
FROM tensorflow/tensorflow:${TF_VERSION}-gpu AS tessera
ARG TF_VERSION
ARG BEAM_VERSION
# Every dependency at the exact version the tests passed with (constraints.txt, which pins
# the base image's TensorFlow and the Beam the Dataflow workers run).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    --mount=type=bind,from=builder,source=/src/constraints.txt,target=/tmp/constraints.txt \
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore \
    python3 -m pip install --no-cache-dir --constraint /tmp/constraints.txt /wheels/tessera-*.whl \
 && python3 -c "import tensorflow as tf, apache_beam as beam; \
assert tf.__version__ == '${TF_VERSION}', tf.__version__; assert beam.__version__ == '${BEAM_VERSION}', beam.__version__"
# A fixed non-root user (Kubernetes runAsUser/runAsGroup 1000 match it); a base image
# user that already holds uid/gid 1000 (e.g. `ubuntu`) makes way.
RUN getent passwd 1000 | cut -d: -f1 | xargs -r userdel \
 && getent group 1000 | cut -d: -f1 | xargs -r groupdel \
 && groupadd --gid 1000 tessera \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/tessera --shell /usr/sbin/nologin tessera
# Caches go under /tmp, which the Kubernetes pods mount as a writable emptyDir (their root
# filesystem is read-only).
ENV PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=1 \
    XDG_CACHE_HOME=/tmp/.cache \
    KERAS_HOME=/tmp/.keras \
    MPLCONFIGDIR=/tmp/.matplotlib
USER 1000:1000
WORKDIR /home/tessera
ENTRYPOINT ["tessera"]
CMD ["--help"]

# ---- dataflow-worker: the same image, started by Dataflow through Beam's SDK harness ----
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam-sdk

FROM tessera AS dataflow-worker
ARG PYTHON_VERSION
COPY --from=beam-sdk /opt/apache/beam /opt/apache/beam
# The harness runs this image's Python: it must be the one the SDK image was built for.
RUN python3 -c "import sys; v = '%d.%d' % sys.version_info[:2]; \
assert v == '${PYTHON_VERSION}', 'base image has Python ' + v + ', PYTHON_VERSION is ${PYTHON_VERSION}'"
ENTRYPOINT ["/opt/apache/beam/boot"]
CMD []

# ---- the default target (`docker build .`) is the runtime image ----
FROM tessera
