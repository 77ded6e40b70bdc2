# The reference service on embedded SQLite. The database lives in /app/data, a volume, so it outlives
# the container: docker compose up (see compose.yaml) mounts the named volume "service-data" there.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATABASE_URL=sqlite:///./data/app.db

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir ".[fastapi]"
COPY examples ./examples

# Run as an unprivileged user that owns the data folder (SQLite needs to create -wal and -shm files there).
RUN useradd --create-home --uid 10001 app && mkdir -p /app/data && chown app:app /app/data
USER app
VOLUME ["/app/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=2s --start-period=20s \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=1).status == 200 else 1)"

CMD ["python", "-m", "examples.service"]
