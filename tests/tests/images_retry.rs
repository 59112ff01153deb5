//! Registry traffic seen through a proxy in front of the real registry.
//! Retries with backoff: the proxy answers the first connections with 503 (or
//! 429); without retries the pull or push fails with one clear line naming the
//! status, with `--image-download-retry` / `--push-retry` it succeeds.
//! Cross-repository mounts: base layers are mounted, not uploaded again.

mod images_support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use images_support::*;
use strata_builder::image::options::RegistryOptions;
use strata_builder::image::store::BlobStore;
use strata_builder::image::{deliver, resolve_base};

/// Answers the first `failures` connections with `status`, then forwards to `upstream`.
struct FlakyProxy {
    addr: String,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    /// Request heads seen on forwarded connections (`POST /v2/… HTTP/1.1`).
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl FlakyProxy {
    fn start(upstream: &str, status: &'static str) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stop2, failures2, upstream) = (stop.clone(), failures.clone(), upstream.to_string());
        let requests2 = requests.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut client) = conn else { continue };
                let fail = failures2
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                        buf.push(byte[0]);
                    }
                    let _ = client.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                let seen = requests2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        // Request lines (bodies may match too; only method lines are kept).
                        for line in String::from_utf8_lossy(&buf[..n]).lines() {
                            if ["GET ", "HEAD ", "POST ", "PUT ", "PATCH "].iter().any(|m| line.starts_with(m)) {
                                seen.lock().unwrap().push(line.to_string());
                            }
                        }
                    }
                    let _ = s.shutdown(Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(Shutdown::Write);
                });
            }
        });
        FlakyProxy { addr, stop, failures, requests, thread: Some(thread) }
    }

    fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn transient_errors_are_retried() {
    let Some((scratch, reg)) = busybox_registry("transient_errors_are_retried", None) else { return };
    let s = scratch.path();

    for status in ["503 Service Unavailable", "429 Too Many Requests"] {
        let proxy = FlakyProxy::start(&reg.addr, status);
        let base_ref = format!("{}/base/busybox:1", proxy.addr);
        let store = BlobStore::new(s.join(format!("store-{}", &status[..3]))).unwrap();

        // Every request is preceded by a ping of /v2/, the session's first by
        // one more (strata authenticates each scope once): the third failure
        // hits the manifest request.
        proxy.fail_next(3);
        let err = resolve_base(&base_ref, &[], &RegistryOptions::default(), &store, &amd64()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("HTTP {}", &status[..3])), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");

        proxy.fail_next(2);
        let pull = RegistryOptions { image_download_retry: 3, ..Default::default() };
        let base = resolve_base(&base_ref, &[], &pull, &store, &amd64()).unwrap();

        let image = built_on(&base, &store);
        let dest = format!("{}/app/retried:1", proxy.addr);
        proxy.fail_next(2);
        let push = RegistryOptions { push_retry: 3, ..Default::default() };
        deliver(&image, &outputs(&[dest.clone()]), &push, &store).unwrap();
        assert_eq!(proxy.failures.load(Ordering::SeqCst), 0);
    }
}

#[test]
fn base_layers_are_mounted_not_uploaded() {
    let Some((scratch, reg)) = busybox_registry("base_layers_are_mounted_not_uploaded", None) else { return };
    let s = scratch.path();
    let proxy = FlakyProxy::start(&reg.addr, "503 Service Unavailable");
    let store = BlobStore::new(s.join("store")).unwrap();
    let opts = RegistryOptions::default();
    let base = resolve_base(&format!("{}/base/busybox:1", proxy.addr), &[], &opts, &store, &amd64()).unwrap();
    let image = built_on(&base, &store);
    proxy.requests.lock().unwrap().clear();
    deliver(&image, &outputs(&[format!("{}/app/mounted:1", proxy.addr)]), &opts, &store).unwrap();
    let requests = proxy.requests.lock().unwrap().clone();
    let base_layer = base.layers[0].digest.as_str();
    let mounts: Vec<&String> = requests.iter().filter(|r| r.starts_with("POST ") && r.contains("mount=")).collect();
    assert_eq!(mounts.len(), 1, "{requests:#?}");
    assert!(mounts[0].contains(&base_layer.replace(':', "%3A")) || mounts[0].contains(base_layer), "{mounts:?}");
    let uploads = requests.iter().filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/") && !r.contains("mount=")).count();
    assert_eq!(uploads, 2, "only the new layer and the config are uploaded: {requests:#?}");
    let manifest_puts = requests.iter().filter(|r| r.starts_with("PUT ") && r.contains("/manifests/")).count();
    assert_eq!(manifest_puts, 1);
}
