"""The prompting baseline: a language model (or VLM) asked whether each concept is present (:mod:`.lm`)."""
