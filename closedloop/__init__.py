"""Closed-loop driving in the procedural world, scored as the CARLA leaderboard scores LangAuto,
and the agent adapter for CARLA users."""
