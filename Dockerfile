# One image for every role: coordinator, worker and sampler differ only in their command.
FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY pyproject.toml README.md ./
COPY model/ model/
COPY protocol/ protocol/
COPY coordinator/ coordinator/
COPY worker/ worker/
RUN pip install --no-cache-dir --no-deps --no-build-isolation .
COPY scripts/ scripts/
COPY saves/README.md saves/
RUN mkdir -p /data /checkpoints
EXPOSE 5555
CMD ["python", "-m", "coordinator", "--help"]
