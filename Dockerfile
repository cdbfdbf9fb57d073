# lineinspect CPU service image: the HTTP service and its runtime dependencies only
# (no training, test or GPU packages). Build: docker build -t lineinspect .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    LINEINSPECT__API__HOST=0.0.0.0
RUN python -m venv /opt/venv
COPY --from=build /wheels /wheels
RUN wheel="$(ls /wheels/lineinspect-*.whl)" \
    && pip install --no-cache-dir "${wheel}[cpu,triton]" \
    && rm -rf /wheels
RUN useradd --system --uid 10001 --create-home --home-dir /app lineinspect
WORKDIR /app
COPY --chown=lineinspect:lineinspect models ./models
COPY --chown=lineinspect:lineinspect deploy/config.example.yaml ./config.yaml
RUN mkdir -p var && chown lineinspect:lineinspect var
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]
CMD ["lineinspect", "serve", "--config", "config.yaml"]
