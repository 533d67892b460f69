"""Lightning callbacks: efficiency (tokens/s, memory), analysis (gradients, layer similarity)."""
