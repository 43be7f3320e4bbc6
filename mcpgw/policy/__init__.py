"""Policy: who may see and call what, on which arguments, and what needs a human's approval."""
