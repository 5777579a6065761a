FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY projections projections
COPY publishers publishers
COPY streams streams
COPY smartretry smartretry
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["smartretry", "run"]
