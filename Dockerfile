# The image the pipeline's flow runs start from on a Docker or Kubernetes work pool
# (docs/scale-out.md, "Work-pool settings"). It holds the package and its dependencies; settings
# come from the environment (REINSTATE_*, PREFECT_API_URL), set on the work pool or the
# deployment's job variables, never baked in.
#
#   docker build -t registry.example/reinstatement:1.0 .
#   docker push registry.example/reinstatement:1.0
#   reinstate deploy --pool reinstatement-docker --image registry.example/reinstatement:1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/reinstatement
COPY pyproject.toml README.md alembic.ini ./
COPY reinstatement ./reinstatement
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
COPY sql ./sql
RUN pip install . && useradd --system --uid 10001 reinstatement
USER reinstatement
# The Docker and Kubernetes workers start each flow run with their own command
# (`prefect flow-run execute`); this default lets the image also serve as a process
# worker: docker run -e PREFECT_API_URL=... -e REINSTATE_DATABASE_URL=... IMAGE
CMD ["prefect", "worker", "start", "--pool", "reinstatement", "--type", "process"]
