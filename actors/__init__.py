"""Ray rollout actors: sample groups of images with the old policy (mixed ODE-SDE rollout)."""
