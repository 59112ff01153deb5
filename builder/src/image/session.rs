//! One registry session per build: the [`Registries`] (its `oci-client`
//! clients, with their connections and bearer tokens) and the tokio runtime
//! that drives them, shared by everything that talks to registries during
//! the build: base resolution, lazy layer downloads, the layer cache and
//! delivery. A build thus pings a registry and asks its token service once per
//! repository and scope, not once per part of the build.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use tokio::runtime::Runtime;

use super::options::RegistryOptions;
use super::registry::Registries;

pub struct Session {
    registries: Arc<Registries>,
    /// Started on first use, so a build that never talks to a registry has no
    /// extra threads while it forks RUN processes.
    rt: OnceLock<Runtime>,
}

impl Session {
    /// A session with [`Registries::new`]'s credentials and the flags' transports.
    pub fn new(opts: &RegistryOptions) -> Result<Session> {
        Ok(Session {
            registries: Arc::new(Registries::new(opts)?),
            rt: OnceLock::new(),
        })
    }

    pub fn registries(&self) -> &Arc<Registries> {
        &self.registries
    }

    /// The session's runtime, started at the first call.
    pub fn runtime(&self) -> Result<&Runtime> {
        if let Some(rt) = self.rt.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime for registry traffic")?;
        // Another thread may have started one meanwhile: this one is dropped.
        Ok(self.rt.get_or_init(|| rt))
    }

    /// Runs `f` to completion on the session's runtime. Do not call it from
    /// inside an async context.
    pub fn block_on<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.runtime()?.block_on(f)
    }
}
