"""Prior stages: frames, optical flow, motion masks, structure from motion, depth."""
