# MLflow tracking server with the PostgreSQL and S3 (MinIO) clients it needs.
FROM python:3.12-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.11 boto3==1.40.0
RUN useradd --create-home mlflow
USER mlflow
EXPOSE 5000
