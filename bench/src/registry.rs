//! A local registry for the build benchmarks: Debian's `docker-registry` on
//! 127.0.0.1 at a free port, storage in a directory of the loop file system,
//! stopped when dropped. Its log (level info) records every request, which
//! the cache benchmark reads to tell manifest look-ups from data.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    child: Child,
    dir: PathBuf,
}

impl Registry {
    /// Starts an open registry storing its data in `dir` (created).
    pub fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: strata-bench\n",
            dir.join("data").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let registry = Registry {
            addr,
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&registry.addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {} within 20 s; log:\n{}",
                    registry.addr,
                    registry.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// Copies an OCI layout (tag `latest`) into this registry as `repo:latest`
    /// with skopeo; returns the reference.
    pub fn push_layout(&self, layout: &Path, repo: &str) -> Result<String> {
        let reference = format!("{}/{repo}:latest", self.addr);
        crate::loopfs::run(
            Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:latest", layout.display()))
                .arg(format!("docker://{reference}")),
        )?;
        Ok(reference)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
