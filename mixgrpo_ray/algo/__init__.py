"""The algorithm on a policy, still without Ray: sampling groups (mixed ODE-SDE rollout) and plain ODE images, and the GRPO update of one learner rank."""
