"""leadscore serving."""
