"""What leaves the lake for people and other tools: exports for other trainers, the SFT-stage report,
and evaluation charts."""
