"""The LMGenDrive network and its training recipe; knows nothing of Ray, shards or S3."""
