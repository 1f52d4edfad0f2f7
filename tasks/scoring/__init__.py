"""Where a trajectory is judged: answer verification and the paper's quality scores and labels."""
