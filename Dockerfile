# Vestnik API image: `docker build -t vestnik . && docker run -p 8080:8080 \
#   -e VESTNIK_REDIS_URL=redis://redis:6379/0 -e VESTNIK_SECRET=... \
#   -e VESTNIK_SERVICE_TOKENS=... vestnik`
# Other parts run from the same image with another command, e.g. `vestnik bridge`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY vestnik ./vestnik
COPY app ./app
COPY streams ./streams
COPY wrapper ./wrapper
# no extras: `bench` (rich) and `test` stay out of the image
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/vestnik \
       vestnik

USER vestnik
WORKDIR /var/lib/vestnik
ENV VESTNIK_HOST=0.0.0.0 \
    VESTNIK_PORT=8080 \
    VESTNIK_DATA_DIR=/var/lib/vestnik
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('VESTNIK_PORT', '8080') + '/healthz', timeout=2)"]
CMD ["vestnik", "api"]
