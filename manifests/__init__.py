"""Building, curating and reading task manifests (Parquet)."""
