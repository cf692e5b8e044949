"""Readers: the ways back out, from files (recordings, datasets), history and SQL."""
