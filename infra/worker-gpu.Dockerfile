# GPU Prefect worker / Kubernetes job image for s2d: CUDA PyTorch, the project with its `gpu` extra
# (vLLM, DeepSpeed), and accelerate for multi-GPU stages (runtime.accelerate_config).
#     docker build -f infra/worker-gpu.Dockerfile -t s2d-worker:gpu .
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-devel
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/s2d
COPY pyproject.toml README.md ./
COPY s2d_pipeline ./s2d_pipeline
COPY flows ./flows
COPY infra/accelerate ./infra/accelerate
RUN pip install --no-cache-dir -e ".[gpu]" && pip install --no-cache-dir "dvc[s3]==3.67.1"
RUN useradd --create-home s2d
USER s2d
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 \
    PYTHONPATH=/workspace
# PYTHONPATH: the mounted checkout's s2d_pipeline wins over the copy installed above (same code the
# deployment was made from); the install brings the pinned dependencies.
WORKDIR /workspace
CMD ["prefect", "worker", "start", "--pool", "s2d-gpu", "--type", "process"]
