//! Shared conformance suite for every [`super::StateStore`] backend (bodies land next).
