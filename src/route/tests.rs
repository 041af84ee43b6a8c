//! Tests for routing.
