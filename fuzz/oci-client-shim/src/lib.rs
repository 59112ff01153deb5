//! `oci_client::secrets::RegistryAuth` as oci-client declares it; nothing else.

pub mod secrets {
    #[derive(Debug, Clone)]
    pub enum RegistryAuth {
        Anonymous,
        Basic(String, String),
        Bearer(String),
    }
}
