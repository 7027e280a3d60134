"""The daemon: one per host; downloads, verifies, stores, resumes and serves pieces."""
