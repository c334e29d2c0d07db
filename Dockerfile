# syntax=docker/dockerfile:1
# WeCom ⇄ Dify bridge. Build: docker build -t wecom-dify:1 .
# 3.11 gets security releases only: keep the patch level current (3.11.17 is the newest at this writing).
FROM python:3.11.17-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/metrics

WORKDIR /app

# Dependencies in their own layer: rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# Only the service code (see .dockerignore): no tests, tools for local play, .env or secrets.
COPY app.py gunicorn.conf.py ./
COPY config/ config/
COPY crypto/ crypto/
COPY services/ services/
COPY utils/ utils/
COPY tools/__init__.py tools/users.py tools/

RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --shell /usr/sbin/nologin bridge
USER 10001:10001

EXPOSE 8000
# follows the port gunicorn listens on (GUNICORN_BIND, as gunicorn.conf.py reads it)
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.getenv('GUNICORN_BIND', '0.0.0.0:8000').rpartition(':')[2]; sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=2).status != 200)"]

# Exec form: gunicorn is PID 1 and receives SIGTERM directly (a shell would not forward it).
CMD ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
