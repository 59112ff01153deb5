//! Images in and out: references, configs and manifests, the blob store,
//! registry credentials and traffic, safe base-image extraction, and the
//! outputs (registry push, OCI layout, docker-archive). User-facing
//! behaviour is described in docs/registries.md.
//!
//! The executor uses a small surface:
//! - [`reference::ImageRef::parse`] for image names;
//! - [`config::ImageConfig`] for the config it edits;
//! - [`store::BlobStore`] where layers and configs live;
//! - [`options::RegistryOptions`], [`options::OutputOptions`] and
//!   [`options::BuildContextSpec`] for the flags it flattens into the CLI;
//! - [`resolve::resolve_base`] to fetch a base image, then
//!   [`extract::extract_image`] (or [`extract::apply_layer`]) to unpack it;
//! - [`deliver::BuiltImage::from_base`] and [`deliver::deliver`] to push and
//!   write the built image.

pub mod archive;
pub mod auth;
pub mod config;
pub mod deliver;
pub mod digest;
pub mod extract;
pub mod layout;
pub mod options;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod store;

pub use deliver::{BuiltImage, Delivered, LayerDescriptor, MountSource, deliver};
pub use resolve::{BaseImage, resolve_base};
