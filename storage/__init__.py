"""Output I/O: local and S3 stores with atomic writes, the shard format (writer and reader), media
encode/decode."""
