"""The insights projection: the pure fold of post events, status, merging and the retry decision."""
