//! The front-end modules under fuzz, compiled from builder/src without the rest of the
//! builder crate (they depend only on regex, serde_json and thiserror).

#[path = "../../builder/src/dockerfile/mod.rs"]
pub mod dockerfile;
#[path = "../../builder/src/dockerignore.rs"]
pub mod dockerignore;
#[path = "../../builder/src/plan.rs"]
pub mod plan;
