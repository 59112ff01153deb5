//! A registry behind TLS with a throwaway CA: `--registry-certificate`
//! makes strata trust it, a wrong CA is refused, and `--skip-tls-verify-pull`
//! / `--skip-tls-verify` skip verification as in kaniko.

mod images_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use images_support::*;
use strata_builder::image::options::{RegistryCertificate, RegistryOptions};
use strata_builder::image::store::BlobStore;
use strata_builder::image::{deliver, resolve_base};
use strata_tests::registry::free_port;
use strata_tests::tools::run_ok;
use strata_tests::{fixtures, require, tools};

struct TlsRegistry {
    addr: String,
    child: Child,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a CA and a server certificate for 127.0.0.1 signed by it; returns the CA's path.
fn make_certs(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    run_ok(Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=strata-test-ca"])
        .arg("-keyout").arg(p("ca.key")).arg("-out").arg(p("ca.pem")).stderr(Stdio::null()));
    run_ok(Command::new("openssl").args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout").arg(p("server.key")).arg("-out").arg(p("server.csr")).stderr(Stdio::null()));
    std::fs::write(p("ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n").unwrap();
    run_ok(Command::new("openssl").args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in").arg(p("server.csr")).arg("-CA").arg(p("ca.pem")).arg("-CAkey").arg(p("ca.key"))
        .arg("-extfile").arg(p("ext")).arg("-out").arg(p("server.pem")).stderr(Stdio::null()));
    p("ca.pem")
}

fn start_tls_registry(dir: &Path) -> TlsRegistry {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: strata-test\n  tls:\n    certificate: {}\n    key: {}\n",
        dir.join("data").display(),
        dir.join("good-server.pem").display(),
        dir.join("good-server.key").display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new("docker-registry").arg("serve").arg(dir.join("config.yml")).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let reg = TlsRegistry { addr, child };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&reg.addr).is_err() {
        assert!(Instant::now() < deadline, "TLS registry did not start: {}", std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    reg
}

#[test]
fn tls_registry_with_registry_certificate_and_skip_verify() {
    let t = "tls_registry_with_registry_certificate_and_skip_verify";
    if !require::tool(t, "docker-registry") || !require::tool(t, "skopeo") || !require::tool(t, "openssl") {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let good_ca = make_certs(s, "good");
    let wrong_ca = make_certs(s, "wrong");
    let reg = start_tls_registry(s);
    let base_ref = fixtures::push_busybox(&reg.addr, "base/busybox", "1", s);
    let cert = |ca: &Path| vec![RegistryCertificate { registry: reg.addr.clone(), path: ca.to_path_buf() }];

    // Trusted through --registry-certificate: pull and push.
    let trusted = RegistryOptions { registry_certificates: cert(&good_ca), ..Default::default() };
    let store = BlobStore::new(s.join("store")).unwrap();
    let base = resolve_base(&base_ref, &[], &trusted, &store, &amd64()).unwrap();
    let dest = format!("{}/app/tls:1", reg.addr);
    let delivered = deliver(&built_on(&base, &store), &outputs(&[dest.clone()]), &trusted, &store).unwrap();
    let inspect = tools::skopeo_inspect(&format!("docker://{dest}"), &["--tls-verify=false"]);
    assert_eq!(inspect["Digest"], delivered.manifest_digest.as_str());

    // A certificate from another CA is refused, in one line.
    let wrong = RegistryOptions { registry_certificates: cert(&wrong_ca), ..Default::default() };
    let fresh = BlobStore::new(s.join("fresh")).unwrap();
    let err = resolve_base(&base_ref, &[], &wrong, &fresh, &amd64()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains(&reg.addr), "{msg}");
    assert_eq!(msg.lines().count(), 1, "{msg}");

    // ... unless verification is skipped, for pull and for push separately.
    let skip = RegistryOptions { registry_certificates: cert(&wrong_ca), skip_tls_verify_pull: true, ..Default::default() };
    let base = resolve_base(&base_ref, &[], &skip, &fresh, &amd64()).unwrap();
    let image = built_on(&base, &fresh);
    assert!(deliver(&image, &outputs(&[dest.clone()]), &skip, &fresh).is_err(), "push still verifies");
    let skip_push = RegistryOptions { skip_tls_verify: true, ..skip };
    deliver(&image, &outputs(&[dest]), &skip_push, &fresh).unwrap();
}
