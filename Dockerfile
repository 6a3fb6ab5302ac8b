# The ledger service image, used by compose.yaml: `ledger serve` against an external Redis.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package build needs: no tests, benchmarks, local data or VCS files.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY ledger ./ledger
COPY projections ./projections
COPY services ./services
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --no-create-home ledger \
    && mkdir /data \
    && chown ledger:ledger /data

USER ledger
ENV LEDGER_DATA_DIR=/data \
    LEDGER_HOST=0.0.0.0 \
    LEDGER_PORT=8080
VOLUME ["/data"]
EXPOSE 8080

ENTRYPOINT ["ledger"]
CMD ["serve"]
