# Vestnik image, one for every process: `docker build -t vestnik . && docker run -p 8080:8080 \
#   -e VESTNIK_REDIS_URL=redis://redis:6379/0 -e VESTNIK_SECRET=... \
#   -e VESTNIK_SERVICE_TOKENS=... vestnik`
# Other parts run from the same image with another command, e.g. `vestnik bridge`
# (deploy/compose.yaml runs them all; docs/ops/production.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# the runtime dependencies exactly as locked (scripts/lock.sh), each file checked against
# its hash; a layer of its own, so a code change does not reinstall them
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY vestnik ./vestnik
COPY app ./app
COPY streams ./streams
COPY wrapper ./wrapper
# --no-deps: everything it needs came from the lock above; no extras: `bench` (rich) and
# `test` stay out of the image
RUN pip install --no-deps . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/vestnik \
       vestnik

USER vestnik
WORKDIR /var/lib/vestnik
ENV VESTNIK_HOST=0.0.0.0 \
    VESTNIK_PORT=8080 \
    VESTNIK_DATA_DIR=/var/lib/vestnik
EXPOSE 8080
# every process answers /readyz: the api on VESTNIK_PORT, the others on VESTNIK_METRICS_PORT
# (set it for them); `vestnik health` picks the port and exits 0 (ready) or 1
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s CMD ["vestnik", "health"]
CMD ["vestnik", "api"]
