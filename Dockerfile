# The asyncproof image: the reference app (Gunicorn), its Celery worker and the Locust scenarios.
# docker build -t asyncproof . ; compose.yaml builds it once for the app, worker and Locust services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md CHANGELOG.md ./
# asyncproof/ is the import root: links to the three folders below, which the build follows.
COPY asyncproof asyncproof
COPY monitoring monitoring
COPY app app
COPY loadtests loadtests
# The `[app,load]` install that tests/install/ checks from a built wheel: serve, worker and prove.
RUN pip install ".[app,load]"

# Not root: a compromised worker cannot touch the image's files.
RUN useradd --create-home --uid 10001 asyncproof
USER asyncproof
ENV ASYNCPROOF_STATE_DIR=/home/asyncproof/state

EXPOSE 8000
# Liveness only: the process and its event loop answer (dependencies are readiness's business).
HEALTHCHECK --interval=10s --timeout=2s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=1).status != 200)"]
CMD ["asyncproof", "serve", "--host", "0.0.0.0", "--port", "8000"]
