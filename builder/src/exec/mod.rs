//! Executing Dockerfile instructions against a stage root: RUN in an isolated
//! process, user resolution, build contexts, COPY/ADD and archives, and the
//! image config changes of metadata instructions.

pub mod archive;
pub mod chmod;
pub mod context;
pub mod copy;
pub mod metadata;
pub mod run;
pub mod scoped;
pub mod user;
