-- One PostgreSQL for both services: Prefect's and MLflow's metadata in separate databases.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
