"""Where seed scenes come from: the procedural world (embedded default) and LMDrive-format
recordings."""
