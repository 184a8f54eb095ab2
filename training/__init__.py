"""leadscore training."""
