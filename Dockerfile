# The desra worker image: this project installed into Python 3.11, run by `prefect worker start`
# (see docker-compose.yml). Flows run from the code in /app (DESRA_PROJECT_DIR), the pull step of
# every deployment in deployments/prefect.yaml.
#
# GPU: torch==2.14.1 (pinned in pyproject.toml) must resolve to a CUDA build here, and the build checks
# that it did. The Linux x86_64 wheel on PyPI (torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64) is a
# CUDA 13.0 build (it requires cuda-toolkit 13.0.3 and the nvidia-*-cu13 wheels), which needs a host
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
    DESRA_PROJECT_DIR=/app \
    DESRA_CACHE=/cache

# libgomp1 (OpenMP for torch/numba), libglib2.0-0 (OpenCV).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer: it is by far the largest download and changes least.
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" torch==2.14.1 torchvision==0.29.1; \
    else \
        pip install torch==2.14.1 torchvision==0.29.1; \
    fi \
    && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY desra_core ./desra_core
COPY desra ./desra
COPY pipeline ./pipeline
COPY tasks ./tasks
COPY flows ./flows
COPY deployments ./deployments
RUN pip install . \
    && python -c "import torch; assert torch.version.cuda, 'torch ' + torch.__version__ + ' is not a CUDA build'"

RUN mkdir -p /data/drop /data/out /cache
# One flow run at a time per worker; PREFECT_API_URL, PREFECT_API_AUTH_STRING and the heartbeat come from the
# environment (docker-compose.yml), the pool from `desra deploy`.
ENV PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30
CMD ["prefect", "worker", "start", "--pool", "desra", "--type", "process", "--limit", "1", "--with-healthcheck"]
