"""Shared basics that every other package may import and that import nothing of the project above them:
errors, devices, model loading, the `Prompt` request type and the optional abilities of parts."""
