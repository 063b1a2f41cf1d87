# CPU Prefect worker for s2d: the project installed from this checkout (pinned by pyproject.toml).
#     docker build -f infra/worker.Dockerfile -t s2d-worker:cpu .
FROM python:3.12-slim
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/s2d
COPY pyproject.toml README.md ./
COPY s2d_pipeline ./s2d_pipeline
COPY flows ./flows
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -e . \
    && pip install --no-cache-dir "dvc[s3]==3.67.1"
RUN useradd --create-home s2d
USER s2d
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 \
    PYTHONPATH=/workspace
# PYTHONPATH: the mounted checkout's s2d_pipeline wins over the copy installed above (same code the
# deployment was made from); the install brings the pinned dependencies.
WORKDIR /workspace
CMD ["prefect", "worker", "start", "--pool", "s2d-process", "--type", "process"]
