"""The run: driver loop, run directory and checkpoints, evaluation, benchmarks and the jobs behind each command."""
