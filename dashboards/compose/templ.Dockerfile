# The TEMPL job of the local stack (build context: the repository root).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY templ_pipeline templ_pipeline
COPY telemetry telemetry
COPY dashboards dashboards
RUN pip install --no-cache-dir .
ENTRYPOINT ["templ"]
