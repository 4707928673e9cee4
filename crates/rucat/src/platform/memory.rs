//! An in-memory platform double, with faults that tests inject.
