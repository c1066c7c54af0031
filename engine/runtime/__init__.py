"""Where and how work runs: devices, progress, batch loops over folders, processes and shards."""
