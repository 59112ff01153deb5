//! The modules under fuzz, compiled from builder/src without the rest of the builder
//! crate: the front end (regex, serde_json, thiserror), layer extraction (tar and the
//! compression crates) and docker config.json parsing (serde, base64).

#[path = "../../builder/src/dockerfile/mod.rs"]
pub mod dockerfile;
#[path = "../../builder/src/dockerignore.rs"]
pub mod dockerignore;
#[path = "../../builder/src/plan.rs"]
pub mod plan;

pub mod image;
