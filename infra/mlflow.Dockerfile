# MLflow tracking server with the PostgreSQL and S3 (MinIO) clients it needs. SQLAlchemy 2.1 (what
# mlflow 3.17.2 resolves to) maps postgresql:// to psycopg 3, not psycopg2: the versions of the
# `services` extra, which tests/test_services.py runs the same server with.
FROM python:3.12-slim
RUN pip install --no-cache-dir mlflow==3.17.2 "psycopg[binary]==3.3.9" boto3==1.43.117
RUN useradd --create-home mlflow
USER mlflow
EXPOSE 5000
