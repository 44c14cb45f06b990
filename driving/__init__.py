"""Driving rules shared by the procedural world and the model: the PID controller, vehicle size,
maneuvers."""
