"""Model code shared by the policies (FLUX transformer calling conventions)."""
