# One image for every role: the API (default command), the Celery worker, beat, Flower and
# the one-shot migration; docker-compose.yml picks the role by overriding the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies in their own layer, so a code change does not reinstall them: install the
# project from pyproject.toml with an empty package, then drop the stub.
COPY pyproject.toml README.md ./
RUN mkdir backend && touch backend/__init__.py \
 && pip install . \
 && pip uninstall -y syncq \
 && rm -rf backend build ./*.egg-info

# The code: the package (with the Alembic migrations under backend/db/migrations),
# alembic.ini at the root, and the scripts.
COPY backend/ backend/
COPY alembic.ini ./
COPY scripts/ scripts/
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info

# /app first on the path, so every entry point (backend.serve, celery, alembic) imports the same
# copy of the code that alembic.ini's migrations live in.
ENV PYTHONPATH=/app \
    DATA_DIR=/data

# Run as a non-root user; DATA_DIR belongs to it, so a named volume mounted there starts
# out writable (Docker copies the directory's owner into a new volume).
RUN groupadd --system --gid 10001 syncq \
 && useradd --system --uid 10001 --gid syncq --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin syncq \
 && mkdir -p /data \
 && chown syncq:syncq /data
USER 10001:10001

EXPOSE 8000 5555

CMD ["python", "-m", "backend.serve", "--host", "0.0.0.0", "--port", "8000", "--access-log"]
