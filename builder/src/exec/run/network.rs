//! `RUN --network`: `default` shares strata's network (as kaniko does);
//! `none` gives the step a new, empty network namespace with only loopback up.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    #[default]
    Default,
    None,
}

impl FromStr for Network {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" | "" => Ok(Network::Default),
            "none" => Ok(Network::None),
            "host" => bail!(
                "RUN --network=host is not supported: the default network is already strata's own"
            ),
            other => bail!("invalid RUN --network={other}: expected default or none"),
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Default => "default",
            Network::None => "none",
        })
    }
}

/// Sets `lo` up in the current network namespace. Allocates nothing (runs in
/// the sandboxed child); returns the errno on failure.
pub(crate) fn loopback_up() -> Result<(), i32> {
    // struct ifreq: 16 bytes of name, then a union whose first member is the
    // short ifr_flags.
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    // SAFETY: socket/ioctl/close on a descriptor we own with a properly sized ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(*libc::__errno_location());
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        req.name[..2].copy_from_slice(b"lo");
        let mut result = Ok(());
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
            result = Err(*libc::__errno_location());
        } else {
            req.flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req) < 0 {
                result = Err(*libc::__errno_location());
            }
        }
        libc::close(sock);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!("none".parse::<Network>().unwrap(), Network::None);
        assert_eq!("default".parse::<Network>().unwrap(), Network::Default);
        assert!("bridge".parse::<Network>().is_err());
    }
}
