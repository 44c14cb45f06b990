"""The data contracts: pyarrow schemas for tasks, samples, shard index and QA rows, with row-level
validation."""
