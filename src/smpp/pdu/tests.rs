//! Codec tests: hex fixtures built by hand from the v3.4 spec, property tests, fuzz-style tests.
use super::*;
