# The adstream image: the CLI, every role and the reference model.
#   docker build -t adstream .                         # CPU (onnxruntime)
#   docker build --build-arg EXTRAS=gpu -t adstream-gpu .   # + CuPy and onnxruntime-gpu
# The GPU variant still needs the host's NVIDIA driver and the NVIDIA container toolkit
# (docker-compose.yml reserves the GPU for the `scorer-gpu` service).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, so that editing the code does not reinstall them.
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
COPY schemas ./schemas
COPY loadtest ./loadtest
COPY tools ./tools
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
 && useradd --system --uid 10001 --home-dir /app adstream \
 && adstream model build --repo /app/models \
 && chown -R adstream /app/models

USER adstream
# Workers serve /metrics, /healthz and /readyz on ADSTREAM_METRICS_PORT.
ENV ADSTREAM_SCORER_MODEL_REPO=/app/models \
    ADSTREAM_METRICS_PORT=9100 \
    ADSTREAM_LOG_FORMAT=json
EXPOSE 9100
ENTRYPOINT ["adstream"]
CMD ["--help"]
