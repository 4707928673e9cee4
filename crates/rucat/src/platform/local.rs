//! The local platform: each engine is a Spark Connect server process on this machine.
