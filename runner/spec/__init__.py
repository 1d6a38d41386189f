"""What a run is asked to do: scenarios and their checks read from YAML, targets from the
models file, the plan of conversations."""
