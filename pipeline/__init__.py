"""Stage commands: each parses its arguments, calls mdr/, and writes the stage's declared outputs."""
