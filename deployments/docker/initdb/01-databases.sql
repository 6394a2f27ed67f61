-- Databases of the platform, created by the postgres image on its first start.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
CREATE DATABASE pynomaly_results;
CREATE DATABASE optuna;
