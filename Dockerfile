# CPU image: LightGBM training. The GPU (WarpGBM) variant is Dockerfile.gpu; both run in docker-compose.yml.
FROM python:3.12-slim

RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 boostream \
    && mkdir /data && chown boostream /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY boostream ./boostream
RUN pip install --no-cache-dir .

USER boostream
ENV BOOSTREAM_HOST=0.0.0.0 BOOSTREAM_PORT=8000 BOOSTREAM_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"
CMD ["boostream", "serve"]
