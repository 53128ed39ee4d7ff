"""One thin absl app per job."""
