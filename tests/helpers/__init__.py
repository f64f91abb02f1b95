"""Helpers shared by the tests (and the benchmarks): tiny random-weight models, a fake OpenAI-compatible
server, a reader of W&B offline run files."""
