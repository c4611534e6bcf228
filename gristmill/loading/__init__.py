"""Trainer-side loading: shard streams with exact resume, sample order, Cooldown mixing."""
