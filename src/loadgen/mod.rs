//! TODO (owned by the bench helper)
