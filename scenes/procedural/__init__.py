"""The procedural world: a deterministic town, traffic, an expert driver and three cameras."""
