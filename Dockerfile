# ehr-bridge: one process serving MLLP (2575) and HTTP (8080), with the embedded SQLite store in /data.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY adapters ./adapters
COPY mappings ./mappings
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /wheels

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin ehr \
    && mkdir -p /data && chown ehr /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY docker/config.yaml /etc/ehr-bridge/config.yaml
USER ehr
WORKDIR /data
ENV EHR_BRIDGE_CONFIG=/etc/ehr-bridge/config.yaml PYTHONUNBUFFERED=1
EXPOSE 2575 8080
VOLUME ["/data"]
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["ehr-bridge"]
CMD ["serve"]
