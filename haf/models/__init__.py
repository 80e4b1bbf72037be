"""The network: backbone (images → feature map) → head (→ features h) → method (last layer, loss, scores)."""
