# The shardctl controller image (charts/shardctl runs `shardctl controller`).
# Only the control path: no torch, accelerate or deepspeed (those belong to the training image).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY orchestrator ./orchestrator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[kubernetes]'

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# a fixed non-root user, matching the chart's podSecurityContext (runAsUser 65532)
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["shardctl"]
CMD ["controller"]
