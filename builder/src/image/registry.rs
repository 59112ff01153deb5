//! Registry traffic through `oci-client`: manifests and blobs in, blobs and
//! manifests out, with kaniko's transport flags, credentials from
//! [`super::auth`], mirrors, and retries with exponential backoff.
//!
//! One `oci_client::Client` is kept per registry and transport (pull and
//! push share it unless kaniko's flags give them different plain HTTP or TLS
//! settings), with its connections and tokens, for the whole build (see
//! [`super::session`]).
//!
//! `oci-client` asks for a token when a request first needs one, so requests
//! in parallel would each ask: strata authenticates each (client, repository,
//! operation) once, before its first request (the push direction's pull scope
//! too, which `oci-client` uses for the HEAD before each upload).
//!
//! Authentication is `oci-client`'s, which keeps its bearer tokens to itself.
//! When strata authenticates a session (registry, repository, direction)
//! itself, before its first request, at its first 429 or after a 401, it keeps
//! the bearer token it gets (from a token service, anonymous or with the docker
//! config's credentials) for the `Retry-After` probe below. Tokens never appear
//! in logs or errors.
//!
//! Retries: 5xx, 429 and connection errors are retried `--image-download-retry`
//! / `--push-retry` times, waiting 0.5s, 1s, 2s … (at most 30s). A 429's
//! `Retry-After` (delta-seconds or HTTP-date; a past date means now) is
//! honoured, capped at 60s: `oci-client` hides response headers, so the URL
//! that answered 429 is asked again with a HEAD request through plain
//! `reqwest` (same TLS settings; when the URL is the registry's own, the
//! session's bearer token, got then if none is kept, or basic credentials;
//! a 401 to it renews the token once) and that answer's `Retry-After` is
//! used; without one, the exponential wait. A 401 in the middle of a session (an expired token) is
//! retried once after authenticating again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use oci_client::Client;
use oci_client::RegistryOperation;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;

use super::auth::{Credential, DockerConfig};
use super::config::{Descriptor, media};
use super::digest::Digest;
use super::options::{Direction, RegistryOptions};
use super::progress::Progress;
use super::reference::ImageRef;
use super::store::BlobStore;

/// Blobs larger than this are uploaded as a series of chunks (PATCH requests).
const CHUNKED_UPLOAD_THRESHOLD: u64 = 8 << 20;
const UPLOAD_CHUNK: usize = 8 << 20;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// (registry, repository, push?): the scope a token is granted for.
type TokenKey = (String, String, bool);

/// (registry, plain HTTP?, skip TLS verification?, CA certificate): one client each.
type ClientKey = (String, bool, bool, Option<std::path::PathBuf>);

/// A registry session for one build: transports, credentials and progress.
pub struct Registries {
    opts: RegistryOptions,
    docker_config: DockerConfig,
    clients: Mutex<HashMap<ClientKey, Arc<Client>>>,
    /// The bearer token of each authenticated session (None: basic or no authentication).
    tokens: tokio::sync::Mutex<HashMap<TokenKey, Option<String>>>,
    /// The scopes authenticated (or being authenticated) on each client.
    authenticated: Mutex<HashMap<(ClientKey, String, bool), Arc<tokio::sync::OnceCell<()>>>>,
    /// Clients whose registry asked for no token.
    open: Mutex<std::collections::HashSet<ClientKey>>,
    progress: Progress,
}

impl Registries {
    /// Loads the docker config (see [`super::auth`]) and checks the flags.
    pub fn new(opts: &RegistryOptions) -> Result<Registries> {
        opts.validate()?;
        Ok(Registries {
            opts: opts.clone(),
            docker_config: DockerConfig::load()?,
            clients: Mutex::new(HashMap::new()),
            tokens: Default::default(),
            authenticated: Default::default(),
            open: Default::default(),
            progress: Progress::new(),
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    fn client(&self, r: &ImageRef, dir: Direction) -> Result<(ClientKey, Arc<Client>)> {
        let t = self.opts.transport(r.registry(), dir);
        let key = (r.registry().to_string(), t.plain_http, t.skip_tls_verify, t.ca_certificate.clone());
        if let Some(c) = self.clients.lock().expect("clients lock").get(&key) {
            return Ok((key, c.clone()));
        }
        let mut extra_root_certificates = Vec::new();
        if let Some(path) = &t.ca_certificate {
            let data =
                std::fs::read(path).with_context(|| format!("reading --registry-certificate {}", path.display()))?;
            extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        let config = ClientConfig {
            protocol: if t.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
            accept_invalid_certificates: t.skip_tls_verify,
            extra_root_certificates,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            user_agent: concat!("strata/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Arc::new(Client::new(config));
        let client = self.clients.lock().expect("clients lock").entry(key.clone()).or_insert(client).clone();
        Ok((key, client))
    }

    fn credential(&self, r: &ImageRef) -> Result<Credential> {
        self.docker_config.credential_for(r.registry())
    }

    async fn session(&self, r: &ImageRef, dir: Direction) -> Result<Arc<Client>> {
        let (key, client) = self.client(r, dir)?;
        let cred = self.credential(r)?;
        client.store_auth_if_needed(r.to_oci().resolve_registry(), &cred.to_oci()).await;
        if dir == Direction::Push {
            self.authenticate_once(&key, &client, r, Direction::Pull).await;
        }
        self.authenticate_once(&key, &client, r, dir).await;
        Ok(client)
    }

    /// Authenticates `r`'s scope on `client` unless done already in this
    /// session. A failure is left to the request, which authenticates again
    /// (and explains a refusal) as it would have alone.
    async fn authenticate_once(&self, key: &ClientKey, client: &Client, r: &ImageRef, dir: Direction) {
        if self.open.lock().expect("open lock").contains(key) {
            return;
        }
        let scope = (key.clone(), r.to_oci().repository().to_string(), dir == Direction::Push);
        let cell = self.authenticated.lock().expect("authenticated lock").entry(scope).or_default().clone();
        let done = cell
            .get_or_try_init(|| async {
                if !self.renew_token(client, r, dir).await? {
                    self.open.lock().expect("open lock").insert(key.clone());
                }
                Ok::<_, OciDistributionError>(())
            })
            .await;
        if let Err(e) = done {
            tracing::debug!("authenticating to {}: {}", r.registry(), one_line(&e));
        }
    }

    /// After a 401 in the middle of a session (an expired token): logs it and
    /// authenticates again.
    async fn authenticate_again(&self, client: &Client, r: &ImageRef, dir: Direction) -> Result<(), OciDistributionError> {
        tracing::warn!("{} refused our authorization (expired token?); authenticating again", r.registry());
        self.renew_token(client, r, dir).await.map(drop)
    }

    /// Authenticates `r`'s session (again) and keeps the bearer token it gets;
    /// `oci-client` uses the new token from then on too. Returns whether the
    /// registry gave a token (not: basic or no authentication).
    async fn renew_token(&self, client: &Client, r: &ImageRef, dir: Direction) -> Result<bool, OciDistributionError> {
        let auth = self.credential(r).map_err(|e| OciDistributionError::GenericError(Some(format!("{e:#}"))))?;
        let token = client.auth(&r.to_oci(), &auth.to_oci(), operation(dir)).await?;
        let got = token.is_some();
        self.tokens.lock().await.insert(token_key(r, dir), token);
        Ok(got)
    }

    /// Fetches the manifest (or index) `r` names, trying its mirrors first.
    /// Returns the bytes, their digest and the reference that answered.
    pub async fn fetch_manifest(&self, r: &ImageRef) -> Result<(Vec<u8>, Digest, ImageRef)> {
        let candidates = self.opts.pull_candidates(r)?;
        let last = candidates.len() - 1;
        for (i, candidate) in candidates.into_iter().enumerate() {
            match self.fetch_manifest_from(&candidate).await {
                Ok((bytes, digest)) => return Ok((bytes, digest, candidate)),
                Err(e) if i < last => {
                    tracing::warn!("mirror {} failed ({e:#}); trying the next source", candidate.registry());
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("pull_candidates always returns the original reference")
    }

    async fn fetch_manifest_from(&self, r: &ImageRef) -> Result<(Vec<u8>, Digest)> {
        let client = self.session(r, Direction::Pull).await?;
        let oci_ref = r.to_oci();
        let auth = self.credential(r)?.to_oci();
        let (bytes, digest) = self
            .with_retry(&client, r, Direction::Pull, self.opts.image_download_retry, || {
                client.pull_manifest_raw(&oci_ref, &auth, media::ACCEPTED_MANIFESTS)
            })
            .await
            .map_err(|e| explain(e, r, "pulling"))?;
        let actual = Digest::of(&bytes);
        if let Some(want) = r.digest()
            && &actual != want
        {
            bail!("manifest of {r} does not match its digest: got {actual}");
        }
        if digest != actual.as_str() {
            tracing::debug!("registry reported manifest digest {digest}, content hashes to {actual}");
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Downloads blob `desc` of repository `r` into `store`, verifying its digest
    /// and size. Does nothing if the store already has it.
    pub async fn fetch_blob(&self, r: &ImageRef, desc: &Descriptor, store: &BlobStore) -> Result<()> {
        if store.contains(&desc.digest) {
            return Ok(());
        }
        let client = self.session(r, Direction::Pull).await?;
        let short = short_digest(&desc.digest);
        let attempts = self.opts.image_download_retry;
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            let transfer = self.progress.start("pulling", short.clone(), desc.size);
            match self.download_once(&client, r, desc, store, &transfer).await {
                Ok(()) => {
                    transfer.finish(None);
                    return Ok(());
                }
                Err(e) if !reauthenticated && e.downcast_ref::<OciDistributionError>().is_some_and(is_unauthorized) => {
                    // A token that expired during a long pull: as `with_retry` does.
                    transfer.finish(Some("failed"));
                    reauthenticated = true;
                    self.authenticate_again(&client, r, Direction::Pull).await?;
                }
                Err(e) => {
                    transfer.finish(Some("failed"));
                    let retryable = e.downcast_ref::<OciDistributionError>().is_some_and(is_retryable)
                        || e.downcast_ref::<std::io::Error>().is_some();
                    if !retryable || attempt >= attempts {
                        return Err(match e.downcast::<OciDistributionError>() {
                            Ok(oe) => explain(oe, r, "pulling"),
                            Err(e) => e,
                        }
                        .context(format!("blob {} of {r}", desc.digest)));
                    }
                    let wait = match e.downcast_ref::<OciDistributionError>() {
                        Some(oe) => self.retry_wait(&client, oe, r, Direction::Pull, attempt).await,
                        None => backoff(attempt),
                    };
                    tracing::warn!(
                        "pulling blob {short} failed ({e:#}); retry {} of {attempts} in {:.1}s",
                        attempt + 1,
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn download_once(
        &self,
        client: &Client,
        r: &ImageRef,
        desc: &Descriptor,
        store: &BlobStore,
        transfer: &super::progress::Transfer,
    ) -> Result<()> {
        let mut stream = client.pull_blob_stream(&r.to_oci(), &oci_descriptor(desc)).await?;
        let mut writer = store.writer()?;
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                if e.kind() == std::io::ErrorKind::Other && e.to_string().contains("digest") {
                    anyhow!("digest mismatch: the registry sent content that does not hash to {}", desc.digest)
                } else {
                    anyhow::Error::new(e)
                }
            })?;
            received += chunk.len() as u64;
            if received > desc.size {
                bail!("registry sent more than the {} bytes the manifest declares", desc.size);
            }
            std::io::Write::write_all(&mut writer, &chunk).context("writing to the blob store")?;
            transfer.advance(chunk.len() as u64);
        }
        if received != desc.size {
            bail!("truncated download: got {received} of {} bytes", desc.size);
        }
        writer.commit(Some(&desc.digest))?;
        Ok(())
    }

    /// As [`Registries::mount_blob`] into each of `destinations`: true when
    /// `desc` is now in all of them (errors count as no).
    pub async fn mount_everywhere(&self, destinations: &[ImageRef], desc: &Descriptor, source: &ImageRef) -> bool {
        for dest in destinations {
            if !matches!(self.mount_blob(dest, desc, source).await, Ok(true)) {
                return false;
            }
        }
        true
    }

    /// Makes `desc` present in `dest` without uploading it: true if it is
    /// already there or a cross-repository mount from `source` (on the same
    /// registry) succeeded, false otherwise.
    pub async fn mount_blob(&self, dest: &ImageRef, desc: &Descriptor, source: &ImageRef) -> Result<bool> {
        if source.registry() != dest.registry() {
            return Ok(false);
        }
        let client = self.session(dest, Direction::Push).await?;
        let (oci_dest, digest) = (dest.to_oci(), desc.digest.to_string());
        let exists = self.with_retry(&client, dest, Direction::Push, self.opts.push_retry, || {
            client.blob_exists(&oci_dest, &digest)
        });
        if exists.await.unwrap_or(false) {
            return Ok(true);
        }
        if source.repository() == dest.repository()
            || client.mount_blob(&oci_dest, &source.to_oci(), &digest).await.is_err()
        {
            return Ok(false);
        }
        // Some registries answer a refused mount by starting an upload: check.
        Ok(client.blob_exists(&oci_dest, &digest).await.unwrap_or(false))
    }

    /// Makes sure blob `desc` (in `store`) exists in `dest`'s repository:
    /// skipped if present, mounted from a `mount_from` repository that holds it (same registry) if
    /// possible, else uploaded (in chunks when large).
    pub async fn push_blob(
        &self,
        dest: &ImageRef,
        desc: &Descriptor,
        store: &BlobStore,
        mount_from: &[ImageRef],
    ) -> Result<()> {
        let client = self.session(dest, Direction::Push).await?;
        let oci_dest = dest.to_oci();
        let digest = desc.digest.to_string();
        let retries = self.opts.push_retry;
        let short = short_digest(&desc.digest);
        let exists = self
            .with_retry(&client, dest, Direction::Push, retries, || client.blob_exists(&oci_dest, &digest))
            .await
            .map_err(|e| explain(e, dest, "pushing to"))?;
        if exists {
            self.progress.start("pushing", short, desc.size).finish(Some("already present"));
            return Ok(());
        }
        for source in
            mount_from.iter().filter(|s| s.registry() == dest.registry() && s.repository() != dest.repository())
        {
            // A refused mount (e.g. no pull right on the source) is not an error: upload instead.
            if client.mount_blob(&oci_dest, &source.to_oci(), &digest).await.is_ok() {
                self.progress
                    .start("pushing", short, desc.size)
                    .finish(Some(&format!("mounted from {}", source.repository())));
                return Ok(());
            }
        }
        let path = store.path(&desc.digest);
        let transfer = self.progress.start("pushing", short, desc.size);
        let advance = std::sync::Arc::new(transfer.advancer());
        let result = self
            .with_retry(&client, dest, Direction::Push, retries, || async {
                if desc.size <= CHUNKED_UPLOAD_THRESHOLD {
                    let bytes = tokio::fs::read(&path).await?;
                    let r = client.push_blob(&oci_dest, bytes, &digest).await;
                    advance(desc.size);
                    r
                } else {
                    let advance = advance.clone();
                    let chunks = file_stream(path.clone()).inspect(move |c| {
                        if let Ok(c) = c {
                            advance(c.len() as u64);
                        }
                    });
                    client.push_blob_stream(&oci_dest, chunks, &digest, Some(desc.size)).await
                }
            })
            .await;
        match result {
            Ok(_) => {
                transfer.finish(None);
                Ok(())
            }
            Err(e) => {
                transfer.finish(Some("failed"));
                Err(explain(e, dest, "pushing to").context(format!("blob {}", desc.digest)))
            }
        }
    }

    /// Puts manifest `bytes` under `dest`'s tag (or digest).
    pub async fn push_manifest(&self, dest: &ImageRef, bytes: &[u8], media_type: &str) -> Result<()> {
        let client = self.session(dest, Direction::Push).await?;
        let oci_dest = dest.to_oci();
        let content_type: reqwest::header::HeaderValue =
            media_type.parse().map_err(|_| anyhow!("bad media type {media_type}"))?;
        let body = bytes::Bytes::copy_from_slice(bytes);
        self.with_retry(&client, dest, Direction::Push, self.opts.push_retry, || {
            client.push_manifest_raw(&oci_dest, body.clone(), content_type.clone())
        })
        .await
        .map_err(|e| explain(e, dest, "pushing to"))?;
        Ok(())
    }

    /// Runs `f`, retrying transient failures up to `retries` more times (see
    /// the module comment), and a 401 once after authenticating again.
    async fn with_retry<T, F, Fut>(
        &self,
        client: &Client,
        r: &ImageRef,
        dir: Direction,
        retries: u32,
        mut f: F,
    ) -> Result<T, OciDistributionError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if is_unauthorized(&e) && !reauthenticated => {
                    reauthenticated = true;
                    self.authenticate_again(client, r, dir).await?;
                }
                Err(e) if attempt < retries && is_retryable(&e) => {
                    let wait = self.retry_wait(client, &e, r, dir, attempt).await;
                    tracing::warn!(
                        "registry request failed ({e}); retry {} of {retries} in {:.1}s",
                        attempt + 1,
                        wait.as_secs_f64()
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How long to wait before retry `attempt`: a 429's `Retry-After`, else the backoff.
    async fn retry_wait(
        &self,
        client: &Client,
        e: &OciDistributionError,
        r: &ImageRef,
        dir: Direction,
        attempt: u32,
    ) -> Duration {
        if is_too_many_requests(e)
            && let Some(url) = error_url(e)
        {
            match self.probe_retry_after(client, &url, r, dir).await {
                Some(wait) => {
                    tracing::info!("{} asks to wait {}s (Retry-After)", r.registry(), wait.as_secs());
                    return wait;
                }
                None => tracing::debug!("no Retry-After from {url}; backing off"),
            }
        }
        backoff(attempt)
    }

    /// Asks `url` again with a HEAD request, authorized as the session is, and
    /// reads its `Retry-After`, capped.
    async fn probe_retry_after(&self, client: &Client, url: &str, r: &ImageRef, dir: Direction) -> Option<Duration> {
        let t = self.opts.transport(r.registry(), dir);
        let mut builder = reqwest::Client::builder()
            .danger_accept_invalid_certs(t.skip_tls_verify)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &t.ca_certificate {
            let pem = std::fs::read(path).ok()?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).ok()?);
        }
        let http = builder.build().ok()?;
        // Credentials go to the registry only, never to a host it redirected to (a CDN).
        let ours = reqwest::Url::parse(url).is_ok_and(|u| targets_registry(&u, r, t.plain_http));
        let key = token_key(r, dir);
        let mut renewed = false;
        loop {
            let mut request = http.head(url);
            if ours {
                if !self.tokens.lock().await.contains_key(&key) {
                    // The session's first 429: get a token of our own, as oci-client did.
                    renewed = true;
                    if let Err(e) = self.renew_token(client, r, dir).await {
                        tracing::debug!("authenticating to {}: {}", r.registry(), one_line(&e));
                    }
                }
                let token = self.tokens.lock().await.get(&key).cloned().flatten();
                request = match (token, self.credential(r)) {
                    (Some(token), _) => request.bearer_auth(token),
                    (None, Ok(Credential::Basic { username, password })) => {
                        request.basic_auth(username, Some(password))
                    }
                    _ => request,
                };
            }
            let response = request.send().await.ok()?;
            if ours && !renewed && response.status() == reqwest::StatusCode::UNAUTHORIZED && wants_bearer(&response) {
                // The kept token expired: renew it, as the retry would.
                renewed = true;
                self.renew_token(client, r, dir).await.ok()?;
                continue;
            }
            let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
            return parse_retry_after(value, SystemTime::now()).map(|d| d.min(MAX_RETRY_AFTER));
        }
    }
}

fn operation(dir: Direction) -> RegistryOperation {
    match dir {
        Direction::Pull => RegistryOperation::Pull,
        Direction::Push => RegistryOperation::Push,
    }
}

fn token_key(r: &ImageRef, dir: Direction) -> TokenKey {
    let oci = r.to_oci();
    (oci.resolve_registry().to_string(), oci.repository().to_string(), dir == Direction::Push)
}

/// Whether `url` is on `r`'s registry (same host and port, and not plain HTTP
/// for a registry spoken to over TLS), as `oci-client` checks before authorizing.
fn targets_registry(url: &reqwest::Url, r: &ImageRef, plain_http: bool) -> bool {
    let scheme = if plain_http { "http" } else { "https" };
    let Ok(registry) = reqwest::Url::parse(&format!("{scheme}://{}", r.to_oci().resolve_registry())) else {
        return false;
    };
    url.host_str() == registry.host_str()
        && url.port_or_known_default() == registry.port_or_known_default()
        && (scheme == "http" || url.scheme() == "https")
}

/// A 401 whose challenge is for a bearer token.
fn wants_bearer(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer")))
}

/// A `Retry-After` value (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date
/// (IMF-fixdate, or the obsolete RFC 850 and asctime forms) whose distance
/// from `now` is rounded up to whole seconds; a date in the past means now.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value)
        .map(|d| d.to_utc())
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT").map(|d| d.and_utc()))
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y").map(|d| d.and_utc()))
        .ok()?;
    let ahead = SystemTime::from(date).duration_since(now).unwrap_or_default();
    Some(Duration::from_secs(ahead.as_secs() + u64::from(ahead.subsec_nanos() > 0)))
}

/// An error's message on one line, for the debug log.
fn one_line(e: &OciDistributionError) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A 401, however `oci-client` reports it.
fn is_unauthorized(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401,
        OciDistributionError::RequestError(e) => e.status().is_some_and(|s| s.as_u16() == 401),
        _ => false,
    }
}

fn is_too_many_requests(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code == 429,
        OciDistributionError::RequestError(e) => e.status().is_some_and(|s| s.as_u16() == 429),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| e.code == OciErrorCode::Toomanyrequests)
        }
        _ => false,
    }
}

fn error_url(e: &OciDistributionError) -> Option<String> {
    match e {
        OciDistributionError::ServerError { url, .. } | OciDistributionError::RegistryError { url, .. } => {
            Some(url.clone())
        }
        OciDistributionError::RequestError(e) => e.url().map(|u| u.to_string()),
        _ => None,
    }
}

/// Reads a file as a stream of large chunks, for chunked uploads.
fn file_stream(
    path: std::path::PathBuf,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(None, move |file: Option<tokio::fs::File>| {
        let path = path.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let mut file = match file {
                Some(f) => f,
                None => match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(e.into()), None)),
                },
            };
            let mut buf = Vec::with_capacity(UPLOAD_CHUNK);
            match (&mut file).take(UPLOAD_CHUNK as u64).read_to_end(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(bytes::Bytes::from(buf)), Some(file))),
                Err(e) => Some((Err(e.into()), None)),
            }
        }
    })
}

fn oci_descriptor(d: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        ..Default::default()
    }
}

fn short_digest(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

fn is_retryable(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::RequestError(e) => {
            e.is_connect()
                || e.is_timeout()
                || e.is_body()
                || e.status().is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|e| e.code == OciErrorCode::Toomanyrequests)
        }
        OciDistributionError::IoError(_) => true,
        _ => false,
    }
}

/// The exponential wait before retry `attempt`: 0.5s, 1s, 2s … at most 30s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)).min(30_000))
}

/// Turns an `oci-client` error into one line a user can act on.
fn explain(e: OciDistributionError, r: &ImageRef, doing: &str) -> anyhow::Error {
    let reg = r.registry();
    match &e {
        _ if is_unauthorized(&e) => {
            anyhow!(
                "{doing} {r}: authentication failed at {reg}: check the credentials for {reg} in your docker config.json"
            )
        }
        OciDistributionError::AuthenticationFailure(_) => {
            anyhow!(
                "{doing} {r}: authentication failed at {reg}: check the credentials for {reg} in your docker config.json"
            )
        }
        OciDistributionError::ImageManifestNotFoundError(_) => {
            anyhow!("{doing} {r}: image not found")
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound)
            }) {
                anyhow!("{doing} {r}: image not found")
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                anyhow!(
                    "{doing} {r}: access denied by {reg}: check the credentials for {reg} in your docker config.json"
                )
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::BlobUnknown)) {
                anyhow!("{doing} {r}: blob not found in the registry")
            } else {
                let msgs: Vec<String> =
                    envelope.errors.iter().map(|e| format!("{:?}: {}", e.code, e.message)).collect();
                anyhow!("{doing} {r}: registry {reg} refused: {}", msgs.join("; "))
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => {
            anyhow!("{doing} {r}: image not found")
        }
        OciDistributionError::ServerError { code, message, .. } => {
            let message: String = message.chars().take(200).collect();
            anyhow!("{doing} {r}: registry {reg} answered HTTP {code}: {}", message.trim())
        }
        OciDistributionError::RequestError(re) if re.is_connect() => {
            anyhow!("{doing} {r}: cannot connect to registry {reg}: {}", root_cause(re))
        }
        OciDistributionError::RequestError(re) if re.is_timeout() => {
            anyhow!("{doing} {r}: registry {reg} timed out")
        }
        OciDistributionError::DigestError(d) => anyhow!("{doing} {r}: digest mismatch: {d}"),
        _ => anyhow!("{doing} {r}: {e}"),
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_792_567_678); // Wed, 21 Oct 2026 07:27:58 GMT
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wednesday, 21-Oct-26 07:28:00 GMT", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:00 2026", now), Some(Duration::from_secs(2)));
        // Part of a second ahead is rounded up; a date in the past means now.
        let later = now + Duration::from_millis(500);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", later), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
