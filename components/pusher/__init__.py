"""Pusher: TFX's Pusher, pushing each distinct model once and every version atomically."""
