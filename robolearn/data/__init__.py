"""Episode storage, sequence sampling and normalization shared by every learner."""
