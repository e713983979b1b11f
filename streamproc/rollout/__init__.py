"""Rollouts inside the stream: deployment state, key routing, guardrails, the controller."""
