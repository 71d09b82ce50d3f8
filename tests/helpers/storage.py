"""The S3 bucket the storage tests create in moto's server (the `bucket` fixture in conftest.py)."""

BUCKET = "hearsay-audio"
