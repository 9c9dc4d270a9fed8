"""The char-LSTM itself: config, corpus sharding, math, optimizer, checkpoints, sampling.

Nothing in this package knows about sockets; coordinator/ and worker/ build on it.
"""
