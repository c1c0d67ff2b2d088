"""The face pipeline: untrusted image bytes to one face encoding, in worker processes, never on disk."""
