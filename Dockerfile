# callstream worker / simulator image (used by docker-compose.yml; not needed for local runs).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY streams ./streams
COPY producers ./producers
RUN pip install --no-cache-dir -c constraints.txt .
ENTRYPOINT ["callstream"]
