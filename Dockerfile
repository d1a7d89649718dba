# The desra worker image: this project installed (a wheel, not a checkout) into Python 3.11, run by
# `prefect worker start` (see docker-compose.yml). Flow runs import the installed package
# (entrypoints desra.flows.full:desra and desra.flows.batch:desra_batch in deployments/prefect.yaml):
# no source folder is left in the image, and none is mounted.
#
# GPU: torch==2.14.1 (pinned in constraints.txt, as for CI) must resolve to a CUDA build here, and the
# build checks that it did. The Linux x86_64 wheel on PyPI (torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64)
# is a CUDA 13.0 build (it requires cuda-toolkit 13.0.3 and the nvidia-*-cu13 wheels), which needs a host
# driver of the 580 series or later. For an older driver, take another CUDA line from PyTorch's index:
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 worker
# The host needs the NVIDIA Container Toolkit for the GPU reservation in docker-compose.yml; without a
# GPU the flows run on the CPU (device "auto").
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DESRA_CACHE=/cache

# libgomp1 (OpenMP for torch/numba), libglib2.0-0 (OpenCV).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer: it is by far the largest download and changes least. The versions come
# from constraints.txt (a PyTorch index's "2.14.1+cu128" satisfies torch==2.14.1).
COPY constraints.txt /tmp/constraints.txt
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install -c /tmp/constraints.txt --index-url "$TORCH_INDEX_URL" torch torchvision; \
    else \
        pip install -c /tmp/constraints.txt torch torchvision; \
    fi \
    && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

# desra itself, with the s3 extra (s3:// drops and outputs), built from a throwaway copy of the sources: only
# the installed package stays.
# (desra/flows, desra/tasks, desra/pipeline and desra/deployments are links to the folders beside them.)
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY desra_core ./desra_core
COPY desra ./desra
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install -c constraints.txt '.[s3,aws-block]' \
    && cd / && rm -rf /src /tmp/constraints.txt \
    && python -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'"

RUN mkdir -p /data/drop /data/out /cache
WORKDIR /data
# One flow run at a time per worker; PREFECT_API_URL, PREFECT_API_AUTH_STRING and the heartbeat come from the
# environment (docker-compose.yml), the pool from `desra deploy`.
ENV PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30
CMD ["prefect", "worker", "start", "--pool", "desra", "--type", "process", "--limit", "1", "--with-healthcheck"]
