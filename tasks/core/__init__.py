"""The shared core every other layer builds on: hashing, the TIR grammar, prompts, trajectory text,
model references, stage declarations, Ray helpers and the errors stages raise."""
