//! strata's snapshotter: given a root directory, find what a build step changed
//! and turn it into an OCI layer. It knows trees, journals, tar and compression;
//! it knows nothing of Dockerfiles.
//!
//! The builder drives a [`Snapshotter`] (`begin_step` / `declare_written` /
//! `finish_step`), and hands each [`ChangeSet`] to [`layer::write_layer`].

pub mod changeset;
pub mod fuse;
pub mod layer;
pub mod manifest;
pub mod scan;
pub mod snapshot;
pub mod walk;

pub use changeset::ChangeSet;
pub use snapshot::{SnapshotMode, Snapshotter, StepKind, StepStart};
