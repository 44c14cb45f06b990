"""The driver: job spec -> units -> executor -> shards, markers, index; storage; reading datasets back; the lmgd CLI."""
