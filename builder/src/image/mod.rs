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
//! - [`session::Session`], the build's one registry session;
//! - [`resolve::resolve_base_in`] to fetch a base image, then
//!   [`extract::extract_image`] (or [`extract::apply_layer`]) to unpack it;
//! - [`deliver::BuiltImage::from_base`] and [`deliver::deliver_in`] to push and
//!   write the built image ([`resolve::resolve_base`] and [`deliver::deliver`]
//!   do the same outside a build, in a session of their own).

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
pub mod session;
pub mod store;

pub use deliver::{BuiltImage, Delivered, LayerDescriptor, MountSource, deliver, deliver_in};
pub use resolve::{BaseImage, resolve_base, resolve_base_in};
pub use session::Session;
