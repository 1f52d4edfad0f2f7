"""What every trainer shares: token features, registration, hardware arguments, progress, and the
dispatch that runs a training stage's function as a Ray Train job or in this process."""
