//! The image modules under fuzz: layer extraction and docker config.json parsing.

#[path = "../../builder/src/image/auth.rs"]
pub mod auth;
#[path = "../../builder/src/image/extract/layer.rs"]
pub mod layer;

/// What auth.rs takes from reference.rs (which itself needs the registry client).
pub mod reference {
    pub const DOCKER_HUB: &str = "docker.io";
}
