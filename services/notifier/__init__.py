"""The notifier: tells people what happened, through the sinks and rules in its configuration."""
