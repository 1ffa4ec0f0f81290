"""Review source: sample data generator, local Udemy-compatible review API, and its client.

The public Udemy API is closed to new clients, so the pipeline runs against a local server with
the same contract; the client works against either.
"""
