"""The driver: job spec -> checks -> units -> the one executor -> shards, markers, index; the QA
run; the lmgd CLI."""
