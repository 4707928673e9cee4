//! The store conformance suite: every backend must pass it.
