# lightning_align image. CPU by default:
#   docker build -t lightning-align .
#   docker run --rm -v "$PWD/runs:/home/align/runs" lightning-align run
# CUDA: start from an image that already has a CUDA build of PyTorch and keep it:
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime --build-arg TORCH_SPEC= .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Empty TORCH_SPEC keeps the base image's torch; the default installs the CPU build from PyTorch's CPU index.
ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN if [ -n "$TORCH_SPEC" ]; then pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"; fi

WORKDIR /opt/lightning_align
COPY pyproject.toml README.md ./
COPY lightning_align ./lightning_align
COPY callbacks ./callbacks
COPY conf ./conf
RUN pip install .

RUN useradd --create-home --uid 1000 align
USER align
WORKDIR /home/align
ENV LIGHTNING_ALIGN_CACHE=/home/align/.cache/lightning_align
VOLUME ["/home/align/runs"]
ENTRYPOINT ["lightning-align"]
CMD ["--help"]
